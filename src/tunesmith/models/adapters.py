"""Choosing what trains: a PEFT LoRA adapter (optionally DoRA, optionally on a 4-bit base: QLoRA),
or every weight (full finetuning)."""

from __future__ import annotations

from typing import Any

from tunesmith.config import AdapterConfig


def apply_adapter(
    model: Any, config: AdapterConfig, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None
) -> Any:
    """Wrap `model` with LoRA (returns a PeftModel), or make every parameter trainable.

    qlora: `model` was loaded with 4-bit base weights (models/load.py, quantize_4bit); PEFT's
    prepare_model_for_kbit_training freezes them and keeps the norms and embeddings in fp32.
    use_dora: DoRA, LoRA plus a trained magnitude vector per adapted layer."""
    if config.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        # Gradient checkpointing stays the caller's choice (train.gradient_checkpointing).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
        use_dora=config.use_dora,
    )
    return get_peft_model(model, lora)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def unwrap_causal_lm(model: Any) -> Any:
    """The transformers model inside a PeftModel (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
