"""The fast path, chosen once at setup; the training loop never knows which one it runs.

`choose_fast_path` looks at the config, the device and the model and returns the choices the
recipe builds with (nothing built elsewhere is patched afterwards):
- `cross_entropy`, passed to the task's make_loss: for causal LMs a fused one that computes the
  LM-head gradients chunk by chunk *in the forward pass* (Liger-style): the same loss and
  gradients, no logits recomputed in backward, no [tokens x vocab] logits kept. Liger's Triton
  kernel (extra `tunesmith[gpu]`) on CUDA when installed, else the pure-PyTorch version
  (train/loss.py holds the whole cross-entropy family);
- `wrap_collate`, applied by the recipe to the task's collate: with `train.compile: true`
  `static_collate` pads every micro-batch to `data.max_seq_len`, since static shapes need rows of
  one length;
- `attention`: the attention kernel training runs with, applied by the recipe with
  `use_attention` before the loss is built. `model.attn_implementation: auto` gives flex
  attention on CUDA (packed rows get a document `BlockMask` from transformers' masking_utils,
  built from the restarting `position_ids`: only the blocks inside a document are computed);
  on the CPU in fp32, `cpu_varlen` (train/cpu_attention.py: each query attends only to its own
  document's keys up to itself, a C kernel compiled once) for head dimensions up to
  `cpu_attention.MAX_HEAD_DIM`, where it is measured faster than SDPA; SDPA otherwise (it gets a
  dense `[rows, 1, S, S]` block-causal mask and computes every key of the row). An explicit value
  is kept as loaded (`cpu_varlen` is switched to here, and refused with the reason where it
  cannot run);
- `compile`: with `train.compile: true` the recipe calls `compile_blocks` on the loss module,
  which torch.compiles every decoder block in place for training (static shapes,
  `dynamic=False`). The block-causal mask (or BlockMask) and the rotary tables are built once per
  batch by the model outside the compiled blocks, so they are not rebuilt per layer, and
  parameter names, checkpoints and PEFT saving are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import Config
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.errors import UserError
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.train import cpu_attention
from tunesmith.train.loss import (
    CrossEntropy,
    chunked_cross_entropy,
    fused_linear_cross_entropy,
    liger_cross_entropy,
)

Collate = Callable[[Sequence[Sequence[int]]], dict[str, Any]]


@dataclass(frozen=True)
class FastPath:
    """The setup choices: build the loss with `cross_entropy`, batch with `wrap_collate(collate)`,
    and, when `compile` is set, compile the loss module's blocks with `compile_blocks`."""

    cross_entropy: CrossEntropy
    wrap_collate: Callable[[Collate], Collate]
    compile: bool = False
    attention: str | None = None  # None: keep the kernel the model was loaded with
    attention_note: str | None = None  # why auto chose (or could not choose) a kernel, for the run's log


def choose_attention(preference: str, device: str, model: nn.Module) -> tuple[str | None, str | None]:
    """The attention kernel training uses, and a note for the run's log: `preference` unless it is
    auto; auto = flex attention on CUDA for models that support it (document BlockMask), the
    per-document CPU kernel where it is faster than SDPA, else what the model was loaded with."""
    causal_lm = unwrap_causal_lm(model)
    if preference == "cpu_varlen":
        reason = _cpu_varlen_problem(causal_lm, device, max_head_dim=None)
        if reason:
            raise UserError(
                f"model.attn_implementation: cpu_varlen cannot train this model ({reason}); use sdpa"
            )
        return "cpu_varlen", "attention: cpu_varlen (per-document causal attention, C kernel)"
    if preference != "auto":
        return None, None  # loaded with exactly this kernel (models/load.py)
    if not str(device).startswith("cuda"):
        reason = _cpu_varlen_problem(causal_lm, device, max_head_dim=cpu_attention.MAX_HEAD_DIM)
        if reason is None:
            return "cpu_varlen", "attention: cpu_varlen (per-document causal attention, C kernel)"
        return None, f"attention: sdpa (cpu_varlen not used: {reason})"
    if not getattr(causal_lm, "_supports_flex_attn", False):
        return None, None
    try:
        import torch.nn.attention.flex_attention  # noqa: F401  (torch >= 2.5)
    except ImportError:
        return None, None
    return "flex_attention", None


def _cpu_varlen_problem(model: nn.Module, device: str, max_head_dim: int | None) -> str | None:
    """Why the per-document CPU kernel cannot (or, past max_head_dim, should not) train `model`."""
    if str(device) != "cpu":
        return f"the device is {device}"
    reason = cpu_attention.unsupported_reason(model)
    if reason:
        return reason
    head_dim = cpu_attention.head_dimension(model.config)
    assert head_dim is not None  # unsupported_reason names a config without one
    if max_head_dim is not None and head_dim > max_head_dim:
        return f"head dimension {head_dim} > {max_head_dim}, where SDPA is faster"
    try:
        cpu_attention.kernel_library(head_dim)  # compiled once per machine (~1 s), then cached
    except cpu_attention.KernelUnavailable as exc:
        return str(exc)
    return None


def use_attention(model: nn.Module, attention: str | None) -> None:
    """Switch the model's attention kernel in place (the weights and parameter names are unchanged)."""
    causal_lm = unwrap_causal_lm(model)
    if attention is None or getattr(causal_lm.config, "_attn_implementation", None) == attention:
        return
    if attention == cpu_attention.NAME:
        cpu_attention.register()
    causal_lm.set_attn_implementation(attention)


def choose_fast_path(config: Config, device: str, model: nn.Module, pad_id: int) -> FastPath:
    """The fastest setup this machine, config and model allow (the same loss)."""
    cross_entropy: CrossEntropy = chunked_cross_entropy
    causal_lm = unwrap_causal_lm(model)
    # Soft-capped logits (Gemma 2) keep the chunked path, which applies the cap.
    if not getattr(getattr(causal_lm, "config", None), "final_logit_softcapping", None):
        cross_entropy = liger_cross_entropy(device) or fused_linear_cross_entropy
    preference = config.model.attn_implementation
    if config.train.compile and preference == "auto" and not str(device).startswith("cuda"):
        preference = "sdpa"  # compiled blocks need traceable attention; the C kernel is opaque to dynamo
    attention, note = choose_attention(preference, device, model)
    if not config.train.compile:
        return FastPath(cross_entropy, _same_collate, attention=attention, attention_note=note)
    length = config.data.max_seq_len

    def wrap(collate: Collate) -> Collate:
        return static_collate(collate, length, pad_id)

    return FastPath(cross_entropy, wrap, compile=True, attention=attention, attention_note=note)


def _same_collate(collate: Collate) -> Collate:
    return collate


def static_collate(
    collate: Callable[[Sequence[Sequence[int]]], dict[str, Any]], length: int, pad_id: int
) -> Callable[[Sequence[Sequence[int]]], dict[str, Any]]:
    """`collate` whose row tensors are padded to `length` columns, so compiled shapes never change.

    The padding tail is a document of its own (its positions restart at 0) with no targets,
    exactly like the tail collate_rows already adds, so the loss is unchanged.
    """
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0, "token_type_ids": 0}

    def padded(rows: Sequence[Sequence[int]]) -> dict[str, Any]:
        batch = collate(rows)
        width = batch["input_ids"].shape[1]
        if width >= length:
            return batch
        extra = length - width
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[1] != width:
                continue
            if key == "position_ids":
                tail = torch.arange(extra, dtype=value.dtype).expand(value.shape[0], extra)
                batch[key] = torch.cat([value, tail], dim=1)
            else:
                batch[key] = F.pad(value, (0, extra), value=fill.get(key, 0))
        return batch

    return padded


def compile_blocks(loss_module: nn.Module) -> list[nn.Module]:
    """torch.compile each repeated decoder block for training; returns the compiled blocks.

    Training rows all have one shape (see static_collate), so each block is compiled once,
    with static shapes; identical blocks share the compiled graph. Evaluation (eval mode,
    rows of many lengths, rare) runs the same block eagerly instead of recompiling per shape.
    """
    model = getattr(loss_module, "model", loss_module)
    blocks = _decoder_blocks(unwrap_causal_lm(model))
    for block in blocks:
        eager = block.forward
        compiled = torch.compile(eager, dynamic=False)

        def forward(
            *args: Any,
            _block: nn.Module = block,
            _compiled: Any = compiled,
            _eager: Any = eager,
            **kwargs: Any,
        ) -> Any:
            return (_compiled if _block.training else _eager)(*args, **kwargs)

        # An instance attribute, not a wrapper module: parameter names, checkpoints, resume
        # and save_pretrained see exactly the eager model.
        block.forward = forward
    return blocks


def _decoder_blocks(model: nn.Module) -> list[nn.Module]:
    # The longest ModuleList of identical blocks: `model.layers` (Llama, Qwen2, Mistral),
    # `transformer.h` (GPT-2), `encoder.layer` (BERT) ...
    best: list[nn.Module] = []
    for module in model.modules():
        if not isinstance(module, nn.ModuleList):
            continue
        same_kind = len({type(block) for block in module}) == 1
        if same_kind and len(module) > len(best):
            best = list(module)
    if not best:
        raise ValueError(f"{type(model).__name__}: no list of decoder blocks found to compile")
    return best
