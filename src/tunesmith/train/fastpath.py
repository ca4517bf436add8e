"""The fast path, chosen once at setup; the training loop never knows which one it runs.

`prepare_for_speed` is called by api.train after the loss module is built. It may:
- swap the causal-LM loss's chunked cross-entropy for a fused one that computes the LM-head
  gradients chunk by chunk *in the forward pass* (Liger-style): the same loss and gradients,
  no logits recomputed in backward, no [tokens x vocab] logits kept. Liger's Triton kernel
  (extra `tunesmith[gpu]`) on CUDA when installed, else the pure-PyTorch version below;
- with `train.compile: true`, torch.compile every decoder block in place for training (static
  shapes, `dynamic=False`). The block-causal mask (or BlockMask) and the rotary tables are built once
  per batch by the model outside the compiled blocks, so they are not rebuilt per layer, and
  parameter names, checkpoints and PEFT saving are unchanged. Static shapes need rows of one
  length: `static_collate` pads every micro-batch to `data.max_seq_len`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import Config
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.tasks import PreparedData
from tunesmith.train.loss import DEFAULT_CHUNK_SIZE, CausalLMLoss, chunked_cross_entropy


def prepare_for_speed(
    loss_module: nn.Module, prepared: PreparedData, config: Config, device: str, pad_id: int
) -> nn.Module:
    """The loss module with the fastest setup this machine and config allow (same loss).

    With `train.compile`, `prepared.collate` is replaced by one giving rows of max_seq_len.
    """
    if isinstance(loss_module, CausalLMLoss):
        causal_lm = unwrap_causal_lm(loss_module.model)
        # Soft-capped logits (Gemma 2) keep the chunked path, which applies the cap.
        if not getattr(causal_lm.config, "final_logit_softcapping", None):
            loss_module.cross_entropy = _liger_cross_entropy(device) or fused_linear_cross_entropy
    if config.train.compile:
        compile_blocks(loss_module)
        prepared.collate = static_collate(prepared.collate, config.data.max_seq_len, pad_id)
    return loss_module


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
        same_kind = isinstance(module, nn.ModuleList) and len({type(block) for block in module}) == 1
        if same_kind and len(module) > len(best):
            best = list(module)
    if not best:
        raise ValueError(f"{type(model).__name__}: no list of decoder blocks found to compile")
    return best


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of (hidden @ weight.T + bias) against targets, chunk by chunk.

    Forward computes each chunk's logits once and, with them, the chunk's gradients for the
    hidden states, the weight and the bias; backward only scales them by the incoming
    gradient (a scalar, since the output is a sum). Three matmuls per chunk instead of the
    four of a checkpointed chunk, and at most one chunk of fp32 logits alive at a time.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 accumulators: the sum over many chunks must not round in bf16 on the way.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(h, weight, bias).float()
            scored = t != IGNORE_INDEX
            safe = t.clamp(min=0).unsqueeze(1)  # ignored positions point at class 0, then get masked
            log_norm = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe).squeeze(1)
            total += ((log_norm - target_logit) * scored).sum()
            correct += (logits.argmax(dim=-1) == t).sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            # d(sum CE)/d logits = softmax - one_hot(target), zero on ignored positions.
            # Computed in place over the chunk's logits and without a host sync (no boolean indexing).
            grad_logits = logits.sub_(log_norm.unsqueeze(1)).exp_()
            grad_logits.scatter_add_(1, safe, torch.full_like(target_logit, -1.0).unsqueeze(1))
            grad_logits.mul_(scored.unsqueeze(1))
            grad_logits = grad_logits.to(hidden.dtype)
            if need_hidden:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if need_weight:
                grad_weight += (grad_logits.t() @ h).float()
            if need_bias:
                grad_bias += grad_logits.float().sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, grad_correct: Any) -> tuple[Any, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_total.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * scale).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for loss.chunked_cross_entropy (no softcap): (loss sum, number correct)."""
    if softcap:
        raise ValueError(
            "fused_linear_cross_entropy does not apply a logit softcap; use chunked_cross_entropy"
        )
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    if hidden.shape[0] == 0 or not torch.is_grad_enabled():
        # Evaluation needs no gradients, and zero targets need a zero loss tied to the graph:
        # the plain chunked path does both.
        return chunked_cross_entropy(hidden, lm_head, targets, chunk_size)
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


def _liger_cross_entropy(device: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """Liger's Triton fused linear cross-entropy on CUDA, when installed with token accuracy."""
    if not str(device).startswith("cuda"):
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    if "return_token_accuracy" not in inspect.signature(LigerFusedLinearCrossEntropyLoss).parameters:
        return None  # older Liger: no accuracy, and the loop logs token accuracy
    liger = LigerFusedLinearCrossEntropyLoss(reduction="sum", return_token_accuracy=True)

    def liger_cross_entropy(
        hidden: torch.Tensor,
        lm_head: nn.Module,
        targets: torch.Tensor,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        softcap: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if hidden.shape[0] == 0:
            return hidden.sum().float(), torch.zeros((), dtype=torch.long, device=hidden.device)
        out = liger(lm_head.weight, hidden, targets, getattr(lm_head, "bias", None))
        # Liger gives accuracy as a share of the scored positions; the loop wants a count.
        scored = (targets != IGNORE_INDEX).sum()
        correct = torch.round(out.token_accuracy.detach().float() * scored).long()
        return out.loss.float(), correct

    return liger_cross_entropy
