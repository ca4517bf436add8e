"""Losses computed where labels exist, without materialising [tokens x vocab] logits.

`CausalLMLoss` runs the decoder to hidden states, keeps the positions that have a target,
and applies the LM head + cross-entropy in chunks under activation checkpointing, so at most
one chunk of fp32 logits exists at a time, in forward and in backward. It is an nn.Module so
DDP/FSDP can wrap it like a model.

Every loss returns *sums* (loss sum, number of targets, number correct); the loop divides by
the number of targets of the whole optimizer step, so gradient accumulation is exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.adapters import unwrap_causal_lm

DEFAULT_CHUNK_SIZE = 4096  # positions per logits chunk: 4096 x 152k vocab x 4 B = 2.5 GB at most


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


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy and number of correct argmax predictions over [N, hidden] positions."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
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

    def __init__(self, model: nn.Module, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # Swapped once at setup by train/fastpath.py for a fused version with the same loss.
        self.cross_entropy = chunked_cross_entropy

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
