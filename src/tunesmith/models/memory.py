"""Training memory from a model's config: arithmetic, no weights loaded.

Peak memory of one training step = weights + gradients + optimizer state + activations kept for
backward + the loss's logits chunk + the framework's own footprint. The activation constants
count the tensors autograd keeps per token and per decoder layer (norm inputs and outputs,
q/k/v after rope, the attention output, the MLP's gate/up/act/product), and were checked
against the measured peak RSS of real CPU training steps (benchmarks/bench_memory.py; figures in
benchmarks/RESULTS.md).

train/memory_probe.py's `measure_training_peak` runs such a step in a fresh process and returns its
peak RSS, so the estimate can be checked on any machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
MIB = 1024**2
METHODS = ("full", "lora", "qlora")
LOSS_CHUNK_SIZE = 4096  # positions per logits chunk in train/loss.py

# Elements kept for backward per token per decoder layer: c_h x hidden + c_i x intermediate + c.
# hidden: norm inputs, fp32 copies and outputs (two norms), q and k after rope, k/v repeated to
# all heads (GQA), the attention output and o_proj's contiguous input; intermediate: gate, up,
# act(gate), product; the constant: rope tables, attention statistics, allocator rounding.
# Fitted to measured CPU peaks (benchmarks/bench_memory.py), within 10-15% of them.
ACTIVATION_HIDDEN = 14
ACTIVATION_INTERMEDIATE = 4
ACTIVATION_FIXED = 2048
# LoRA: the adapter path's inputs and outputs (dropout copies, A outputs, the sums) add a share.
LORA_ACTIVATION_SHARE = 0.25
# The loss chunk in backward: recomputed fp32 logits, their gradient and softmax.
LOGITS_COPIES = 3
# QLoRA (bitsandbytes nf4, blocksize 64, double quantisation): 4 bits + ~0.127 bits of constants.
QLORA_BYTES_PER_PARAM = 0.5 + 0.127 / 8
CPU_BASELINE_BYTES = 390 * MIB  # python + torch + transformers + peft, measured on Linux x86-64
GPU_OVERHEAD_BYTES = 1 * GIB  # CUDA context, kernels and allocator slack outside tensors


@dataclass
class ModelShape:
    """What the arithmetic needs from a config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool = True
    gated_mlp: bool = True  # SwiGLU (Llama/Qwen/Mistral/Gemma) vs. two-matrix MLP (GPT-2/BERT)
    extra_parameters: int = 0  # position embeddings, biases

    @property
    def attention_parameters(self) -> int:
        q_and_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return q_and_o + k_and_v

    @property
    def mlp_parameters(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size

    @property
    def layer_parameters(self) -> int:
        return self.attention_parameters + self.mlp_parameters + 2 * self.hidden_size

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def num_parameters(self) -> int:
        body = self.num_layers * self.layer_parameters
        return body + self.embedding_parameters + self.hidden_size + self.extra_parameters

    def lora_parameters(self, rank: int) -> int:
        """LoRA A and B on every linear layer of the decoder ('all-linear', not the LM head)."""
        h, i = self.hidden_size, self.intermediate_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attention = (h + q) + 2 * (h + kv) + (q + h)
        mlp = (3 if self.gated_mlp else 2) * (h + i)
        return rank * self.num_layers * (attention + mlp)


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A ModelShape from a Hugging Face config.json dict (Llama-like, GPT-2 or BERT naming)."""
    if "n_embd" in config:  # GPT-2
        hidden = config["n_embd"]
        heads = config["n_head"]
        positions = config.get("n_positions", 1024)
        layers = config["n_layer"]
        return ModelShape(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            intermediate_size=config.get("n_inner") or 4 * hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            tied_embeddings=True,
            gated_mlp=False,
            extra_parameters=positions * hidden + layers * (9 * hidden + 4 * hidden),
        )
    if "text_config" in config:  # multimodal wrappers: the language model is what trains
        return shape_from_config(config["text_config"])
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    encoder = config.get("model_type") in ("bert", "roberta", "modernbert", "deberta-v2")
    return ModelShape(
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        gated_mlp=not encoder and config.get("hidden_act", "silu") not in ("gelu_new", "gelu"),
        extra_parameters=config.get("max_position_embeddings", 0) * hidden if encoder else 0,
    )


@dataclass
class Setting:
    """How the model would be trained."""

    method: str = "lora"  # full | lora | qlora
    seq_len: int = 512
    batch_size: int = 8
    gradient_checkpointing: bool = False
    lora_rank: int = 16
    device: str = "cuda"  # cuda: bf16 weights, fused attention; cpu: fp32, materialised attention
    packed: bool = True
    baseline_bytes: int | None = None  # the process's own footprint; default by device


@dataclass
class MemoryEstimate:
    method: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    trainable_parameters: int
    total: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_memory(shape: ModelShape, setting: Setting) -> MemoryEstimate:
    """Peak memory of a training step in bytes, by component."""
    if setting.method not in METHODS:
        raise ValueError(f"method {setting.method!r}: use one of {', '.join(METHODS)}")
    on_gpu = setting.device != "cpu"
    # bf16 on GPUs; fp32 on CPU (no bf16 units there). QLoRA computes in bf16.
    element = 2 if on_gpu or setting.method == "qlora" else 4
    parameters = shape.num_parameters
    notes = []

    if setting.method == "full":
        trainable = parameters
        weights = parameters * element
        # torch's AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype; no master copy.
        gradients = parameters * element
        optimizer = 2 * parameters * element
    else:
        trainable = shape.lora_parameters(setting.lora_rank)
        body = shape.num_layers * (shape.attention_parameters + shape.mlp_parameters)
        rest = parameters - body
        if setting.method == "qlora":
            # Linear layers in 4 bits; embeddings, norms and the LM head stay in bf16.
            weights = int(body * QLORA_BYTES_PER_PARAM) + rest * 2
            notes.append("qlora needs a CUDA GPU and bitsandbytes")
        else:
            weights = parameters * element
        # PEFT keeps adapter weights in fp32 (autocast_adapter_dtype), so grads and states are fp32.
        weights += trainable * 4
        gradients = trainable * 4
        optimizer = 2 * trainable * 4

    tokens = setting.seq_len * setting.batch_size
    per_token_layer: float = (
        ACTIVATION_HIDDEN * shape.hidden_size
        + ACTIVATION_INTERMEDIATE * shape.intermediate_size
        + ACTIVATION_FIXED
    )
    if setting.method != "full":
        per_token_layer *= 1 + LORA_ACTIVATION_SHARE
    layer_bytes = tokens * per_token_layer * element
    # Embedding output, final norm and the hidden states handed to the loss.
    outside_layers = 4 * tokens * shape.hidden_size * element
    if setting.gradient_checkpointing:
        # Only each layer's input is kept; during a layer's backward its activations exist again
        # (recomputed) together with gradients of the same size: two layers' worth.
        activations = (
            shape.num_layers * tokens * shape.hidden_size * element + 2 * layer_bytes + outside_layers
        )
    else:
        activations = shape.num_layers * layer_bytes + outside_layers
    logits = LOGITS_COPIES * min(tokens, LOSS_CHUNK_SIZE) * shape.vocab_size * 4

    overhead = setting.baseline_bytes
    if overhead is None:
        overhead = GPU_OVERHEAD_BYTES if on_gpu else CPU_BASELINE_BYTES
    result = MemoryEstimate(
        method=setting.method,
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(activations),
        logits=int(logits),
        overhead=int(overhead),
        trainable_parameters=int(trainable),
        notes=notes,
    )
    result.total = sum(
        (
            result.weights,
            result.gradients,
            result.optimizer,
            result.activations,
            result.logits,
            result.overhead,
        )
    )
    return result


def parse_size(text: str) -> int:
    """'24GiB', '24GB', '512MiB', '1.5T' -> bytes (binary units: GB is read as GiB, as GPUs are sold)."""
    units = {"": 1, "b": 1, "k": 1024, "m": MIB, "g": GIB, "t": 1024**4}
    cleaned = text.strip().lower().replace(" ", "").removesuffix("ib").removesuffix("b")
    number = cleaned.rstrip("kmgt")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write it like 24GiB, 80GB or 512MiB") from None
    if unit not in units or value <= 0:
        raise ValueError(f"{text!r} is not a size; write it like 24GiB, 80GB or 512MiB")
    return int(value * units[unit])


def format_size(num_bytes: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{int(num_bytes)} B"


def smallest_fitting(estimates: list[MemoryEstimate]) -> MemoryEstimate:
    return min(estimates, key=lambda e: e.total)


def available_memory(device: str) -> int:
    """GPU memory of device 0, or this machine's RAM (what a CPU run may use)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * GIB


def fits(estimate: MemoryEstimate, budget_bytes: int) -> bool:
    return estimate.total <= budget_bytes


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
