"""Losses computed where labels exist, without materialising [tokens x vocab] logits.

`CausalLMLoss` runs the decoder to hidden states, keeps the positions that have a target,
and applies the LM head + cross-entropy in chunks under activation checkpointing, so at most
one chunk of fp32 logits exists at a time, in forward and in backward. It is an nn.Module so
DDP/FSDP can wrap it like a model.

The cross-entropy family (one signature, `CrossEntropy`): `chunked_cross_entropy` (checkpointed
chunks, the default and the only one applying a logit softcap), `fused_linear_cross_entropy`
(LM-head gradients computed chunk by chunk in the forward pass: no logits recomputed in backward)
and Liger's Triton kernel on CUDA (`liger_cross_entropy`, extra `tunesmith[gpu]`). train/fastpath.py
chooses one at setup and the loss module is built with it.

Every loss returns *sums* (loss sum, number of targets, number correct); the loop divides by
the number of targets of the whole optimizer step, so gradient accumulation is exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.adapters import unwrap_causal_lm

DEFAULT_CHUNK_SIZE = 4096  # positions per logits chunk: 4096 x 152k vocab x 4 B = 2.5 GB at most

# (hidden [N, H] of the supervised positions, lm_head, targets [N], chunk_size, softcap)
#   -> (loss sum, number of correct argmax predictions)
CrossEntropy = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _chunk_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return loss, correct


def _head_parameters(lm_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight [vocab, hidden] and bias (None for most decoders)."""
    return cast(torch.Tensor, lm_head.weight), getattr(lm_head, "bias", None)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy and number of correct argmax predictions over [N, hidden] positions."""
    weight, bias = _head_parameters(lm_head)
    # No supervised position in this micro-batch: a zero loss still tied to the graph, so
    # backward() gives zero gradients (and DDP sees every parameter) instead of failing.
    total = hidden.sum().float() if hidden.shape[0] == 0 else hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled():
            # Recompute this chunk's logits in backward instead of keeping them alive.
            loss, hits = checkpoint(_chunk_loss, h, weight, bias, t, softcap, use_reentrant=False)
        else:
            loss, hits = _chunk_loss(h, weight, bias, t, softcap)
        total = total + loss
        correct = correct + hits
    return total, correct


class CausalLMLoss(nn.Module):
    """Next-token loss on supervised positions (labels != IGNORE_INDEX) of packed rows."""

    def __init__(
        self,
        model: nn.Module,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cross_entropy: CrossEntropy | None = None,
    ):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # Chosen at setup (train/fastpath.py): the same loss, computed the fastest way available.
        self.cross_entropy = cross_entropy or chunked_cross_entropy

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        causal_lm = unwrap_causal_lm(self.model)
        decoder = getattr(causal_lm, causal_lm.base_model_prefix)
        lm_head = causal_lm.get_output_embeddings()
        outputs = decoder(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        )
        hidden = outputs[0]
        # Position t predicts token t+1: select the positions whose next token is a target
        # *before* the LM head, so untrained positions never reach the vocabulary projection.
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        loss_sum, correct = self.cross_entropy(selected, lm_head, targets[keep], self.chunk_size, softcap)
        return {"loss_sum": loss_sum, "num_targets": keep.sum(), "num_correct": correct}


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
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need_bias else None
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
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
            if grad_bias is not None:
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
    weight, bias = _head_parameters(lm_head)
    if hidden.shape[0] == 0 or not torch.is_grad_enabled():
        # Evaluation needs no gradients, and zero targets need a zero loss tied to the graph:
        # the plain chunked path does both.
        return chunked_cross_entropy(hidden, lm_head, targets, chunk_size)
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


def liger_cross_entropy(device: str) -> CrossEntropy | None:
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

    def cross_entropy(
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

    return cross_entropy


def weighted_classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    multi_label: bool,
    threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Sum of w * loss over the targets, the sum of w (the normaliser) and the number correct.

    Multi-class: cross-entropy per example, w = its class weight. Multi-label: binary
    cross-entropy per (example, label) entry, w = the label's weight on positives, 1 otherwise.
    """
    logits = logits.float()
    if multi_label:
        per_target = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        correct = ((torch.sigmoid(logits.detach()) >= threshold).float() == labels).sum()
    else:
        per_target = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.detach().argmax(dim=-1) == labels).sum()
    return {"loss_sum": (per_target * weights).sum(), "num_targets": weights.sum(), "num_correct": correct}


class ClassificationLoss(nn.Module):
    """Sequence classification: pooled logits from the head, class-weighted loss sums."""

    def __init__(self, model: nn.Module, multi_label: bool = False, threshold: float = 0.5):
        super().__init__()
        self.model = model
        self.multi_label = multi_label
        self.threshold = threshold

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        from tunesmith.models.heads import classifier_logits

        logits = classifier_logits(self.model, input_ids, attention_mask, token_type_ids)
        out = weighted_classification_loss(logits, labels, weights, self.multi_label, self.threshold)
        out["logits"] = logits.detach()
        return out


def batch_to_device(batch: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


# --------------------------------------------------------------------------------------------
# Preference losses (task: preference): DPO, IPO and SimPO on per-sequence reply log-probs.
#
# Log-probs of target tokens per sequence (preference pairs, train/preference_loss.py): several
# sequences in one forward pass (the rows may be packed). `sequence_index` says, for every position
# of `labels`, which sequence its target belongs to (-1: not a target of any sequence).


def _chunk_target_logps(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(hidden, weight, bias).float()
    logps = logits.log_softmax(dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return logps, logits.detach().argmax(dim=-1) == targets


def target_logps(
    hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax hits for [N, hidden] selected positions, one logits chunk at a time."""
    weight: torch.Tensor = lm_head.weight  # type: ignore[assignment]  # nn.Module attributes are untyped
    bias: torch.Tensor | None = getattr(lm_head, "bias", None)
    logps, hits = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled():
            # As in chunked_cross_entropy: recompute the chunk's logits in backward.
            lp, hit = checkpoint(_chunk_target_logps, h, weight, bias, t, use_reentrant=False)
        else:
            lp, hit = _chunk_target_logps(h, weight, bias, t)
        logps.append(lp)
        hits.append(hit)
    if not logps:
        return hidden.sum(dim=-1).float(), torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return torch.cat(logps), torch.cat(hits)


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    sequence_index: torch.Tensor,
    num_sequences: int,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of reply-token log-probs, number of reply tokens) per sequence, [num_sequences] each.

    The LM head runs only on the reply positions (selected from the hidden states), so the
    [tokens x vocab] logits of the prompts are never computed.
    """
    causal_lm = unwrap_causal_lm(model)
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)[0]
    targets = labels[:, 1:]
    owners = sequence_index[:, 1:]
    keep = targets != IGNORE_INDEX
    logps, _ = target_logps(
        hidden[:, :-1][keep], causal_lm.get_output_embeddings(), targets[keep], chunk_size
    )
    owner = owners[keep]
    sums = torch.zeros(num_sequences, dtype=torch.float32, device=logps.device).index_add(0, owner, logps)
    counts = torch.zeros(num_sequences, dtype=torch.float32, device=logps.device).index_add(
        0, owner, torch.ones_like(logps)
    )
    return sums, counts
