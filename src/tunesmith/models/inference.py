"""Loading a trained model (or any model) for inference: an adapter on its base, or a full model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import ModelConfig
from tunesmith.errors import UserError


def quiet_libraries() -> None:
    """Keep the console for tunesmith's own output: no per-file progress bars or advice from libraries."""
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", message=r".*fan_in_fan_out.*")


def load_for_inference(
    target: Path, name: str | None = None, device: str = "auto", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode for a model directory or adapter `target`; `name` is what the
    user gave ('embedded', a hub id) when `target` is not a folder."""
    from tunesmith.models.load import (
        check_weight_files,
        load_causal_lm,
        load_tokenizer,
        read_adapter_config,
        resolve_model_path,
        select_device,
        unsafe_pickle_error,
    )

    quiet_libraries()
    device = select_device(device)
    target = Path(target)
    adapter_config = read_adapter_config(target)
    model_config = ModelConfig(name=str(target), trust_remote_code=trust_remote_code)
    if adapter_config is not None:
        from peft import PeftModel

        base = adapter_config["base_model_name_or_path"]
        base_config = ModelConfig(name=base, trust_remote_code=trust_remote_code)
        model = load_causal_lm(resolve_model_path(base), base_config, device)
        check_weight_files(target)
        try:
            model = PeftModel.from_pretrained(model, str(target))
        except Exception as exc:
            raise unsafe_pickle_error(target, exc) or UserError(
                f"{target}: not a loadable PEFT adapter ({type(exc).__name__}: {exc})"
            ) from None
        tokenizer = load_tokenizer(str(target), model_config)
    else:
        path = resolve_model_path(str(target) if target.exists() else (name or str(target)))
        model_config = ModelConfig(name=path, trust_remote_code=trust_remote_code)
        model = load_causal_lm(path, model_config, device)
        tokenizer = load_tokenizer(path, model_config)
    model.eval()
    return model, tokenizer
