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
# A preference batch holds 2P sequences: the chosen reply of pair k is sequence k, its rejected
# reply sequence P + k, all in one forward pass (the rows may be packed). `sequence_index` says,
# for every position of `labels`, which sequence its target belongs to (-1: not a reply token).

PREFERENCE_LOSSES = ("dpo", "ipo", "simpo")


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


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7); label_smoothing > 0 is conservative DPO."""
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    return (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    )


def ipo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair IPO loss (Azar et al. 2023, eq. 17) on per-token mean log-probs, as TRL computes it."""
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    return (logits - 1 / (2 * beta)) ** 2


def simpo_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-pair SimPO loss (Meng et al. 2024): reference-free, on per-token mean log-probs."""
    logits = (chosen - rejected) - gamma / beta
    return (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    )


def preference_losses(
    kind: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from the log-probs the loss works on.

    `chosen`/`rejected` are sums of reply log-probs for dpo, per-token means for ipo and simpo.
    The implicit reward is beta * (policy - reference), or beta * policy for reference-free simpo.
    """
    if kind == "simpo":
        losses = simpo_losses(chosen, rejected, beta, simpo_gamma, label_smoothing)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    assert ref_chosen is not None and ref_rejected is not None, f"{kind} needs reference log-probs"
    if kind == "dpo":
        losses = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    elif kind == "ipo":
        losses = ipo_losses(chosen, rejected, ref_chosen, ref_rejected, beta)
    else:
        raise ValueError(f"unknown preference loss {kind!r}; use one of {', '.join(PREFERENCE_LOSSES)}")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


class PreferenceLoss(nn.Module):
    """Preference loss sums over pairs: {loss_sum, num_targets = pairs, num_correct = pairs ranked right}.

    The loop divides by the pairs of the whole step, as it divides by tokens for the LM tasks, so
    accumulation, resume and distributed runs are unchanged. `reference`:
      - "adapter_disabled": the reference is the base model, computed under the PEFT adapter's
        `disable_adapter()` context without gradients (no second copy of the weights);
      - "precomputed": the batch carries `reference_logps` (cached once before training);
      - "frozen_copy": a frozen deep copy of the model made at construction;
      - "none": reference-free losses (simpo).
    A batch without `sequence_index` (plain LM rows, e.g. the forgetting probe) gets the
    next-token loss of the policy, exactly as CausalLMLoss would compute it.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str = "dpo",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        reference: str = "adapter_disabled",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cross_entropy: CrossEntropy | None = None,
    ):
        super().__init__()
        if kind not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown preference loss {kind!r}; use one of {', '.join(PREFERENCE_LOSSES)}")
        self.model = model
        self.kind, self.beta, self.label_smoothing, self.simpo_gamma = (
            kind,
            beta,
            label_smoothing,
            simpo_gamma,
        )
        self.reference = "none" if kind == "simpo" else reference
        self.chunk_size = chunk_size
        self.cross_entropy = cross_entropy or chunked_cross_entropy  # the LM path only
        self.frozen: list[nn.Module] = []  # a plain list: not a submodule, so never trained nor saved
        if self.reference == "frozen_copy":
            import copy

            frozen = copy.deepcopy(unwrap_causal_lm(model)).eval()
            frozen.requires_grad_(False)
            self.frozen.append(frozen)

    def _logps(self, model: nn.Module, batch: dict[str, Any], num_sequences: int) -> tuple[torch.Tensor, ...]:
        sums, counts = sequence_logps(
            model,
            batch["input_ids"],
            batch["labels"],
            batch["sequence_index"],
            num_sequences,
            batch.get("position_ids"),
            self.chunk_size,
        )
        return sums, counts

    def policy_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """Sums of the policy's reply log-probs per sequence of a collated pair batch."""
        return self._logps(self.model, batch, 2 * int(batch["num_pairs"]))[0]

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Any], num_sequences: int) -> torch.Tensor:
        """Sums of the reference model's reply log-probs per sequence (no gradients)."""
        if self.reference == "frozen_copy":
            return self._logps(self.frozen[0], batch, num_sequences)[0]
        if self.reference == "adapter_disabled":
            if not hasattr(self.model, "disable_adapter"):
                # A model without an adapter (a base model scored on its own) is its own reference.
                return self._logps(self.model, batch, num_sequences)[0]
            with self.model.disable_adapter():  # type: ignore[operator]  # a PeftModel's context
                return self._logps(self.model, batch, num_sequences)[0]
        raise ValueError(
            f"reference {self.reference!r}: the batch carries no cached reference log-probs and there is no "
            "reference model to run"
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        sequence_index: torch.Tensor | None = None,
        num_pairs: int | torch.Tensor | None = None,
        reference_logps: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        if sequence_index is None:
            return CausalLMLoss.forward(self, input_ids, labels, position_ids, attention_mask)  # type: ignore[arg-type]
        pairs = int(num_pairs) if num_pairs is not None else int(sequence_index.max()) // 2 + 1
        batch: dict[str, torch.Tensor | None] = {
            "input_ids": input_ids,
            "labels": labels,
            "sequence_index": sequence_index,
            "position_ids": position_ids,
        }
        sums, counts = self._logps(self.model, batch, 2 * pairs)
        if self.reference == "none":
            reference = None
        elif reference_logps is not None:
            reference = reference_logps.to(sums.device, torch.float32)
        else:
            reference = self.reference_logps(batch, 2 * pairs)
        # DPO scores summed reply log-probs; IPO and SimPO per-token means (as TRL does).
        scale = counts.clamp(min=1) if self.kind in ("ipo", "simpo") else torch.ones_like(counts)
        policy = sums / scale
        ref = reference / scale if reference is not None else None
        losses, chosen_rewards, rejected_rewards = preference_losses(
            self.kind,
            policy[:pairs],
            policy[pairs:],
            ref[:pairs] if ref is not None else None,
            ref[pairs:] if ref is not None else None,
            self.beta,
            self.label_smoothing,
            self.simpo_gamma,
        )
        out = {
            "loss_sum": losses.sum(),
            "num_targets": torch.tensor(pairs, device=losses.device),
            "num_correct": (chosen_rewards > rejected_rewards).sum(),
            "chosen_logps": sums[:pairs].detach(),
            "rejected_logps": sums[pairs:].detach(),
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reply_tokens": counts.detach(),
            # Logged by the loop each step, per pair (TRL's rewards/chosen, rewards/rejected, rewards/margins).
            "logged": {
                "chosen_reward": (chosen_rewards.sum(), pairs),
                "rejected_reward": (rejected_rewards.sum(), pairs),
                "reward_margin": ((chosen_rewards - rejected_rewards).sum(), pairs),
                "chosen_logps": (sums[:pairs].detach().sum(), pairs),
                "rejected_logps": (sums[pairs:].detach().sum(), pairs),
            },
        }
        if reference is not None:
            out["reference_logps"] = reference.detach()
        return out


def _reply_hidden(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, nn.Module]:
    """Hidden states at the positions that predict a reply token, and the model's LM head."""
    causal_lm = unwrap_causal_lm(model)
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    hidden = decoder(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False)[0]
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    return hidden[:, :-1][keep], causal_lm.get_output_embeddings()


@torch.no_grad()
def reference_token_kl(
    loss: PreferenceLoss, batch: dict[str, Any], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[float, int]:
    """Sum over reply positions of KL(pi(. | context) || pi_ref(. | context)), and the number of positions.

    The exact next-token KL over the whole vocabulary, on the contexts of the given replies; it
    needs a reference model to run (adapter_disabled or frozen_copy), one logits chunk at a time.
    """
    from contextlib import nullcontext

    disabled: Any
    if loss.reference == "frozen_copy":
        reference_model, disabled = loss.frozen[0], nullcontext
    elif loss.reference == "adapter_disabled":
        reference_model, disabled = loss.model, loss.model.disable_adapter
    else:
        raise ValueError(f"reference {loss.reference!r} has no reference model to run")
    policy_hidden, policy_head = _reply_hidden(loss.model, batch)
    with disabled():
        reference_hidden, reference_head = _reply_hidden(reference_model, batch)
    total = 0.0
    for start in range(0, policy_hidden.shape[0], chunk_size):
        policy = policy_head(policy_hidden[start : start + chunk_size]).float().log_softmax(-1)
        with disabled():
            reference = reference_head(reference_hidden[start : start + chunk_size]).float().log_softmax(-1)
        total += float((policy.exp() * (policy - reference)).sum())
    return total, int(policy_hidden.shape[0])
