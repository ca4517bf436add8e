"""Preference losses on reply log-probs: DPO, IPO and SimPO, the `PreferenceLoss` module the
preference task trains with, and the exact next-token KL to the reference.

A preference batch holds 2P sequences: the chosen reply of pair k is sequence k, its rejected
reply sequence P + k, all in one forward pass (the rows may be packed); train/loss.py's
`sequence_logps` sums their reply log-probs. Like every loss, `PreferenceLoss` returns sums (the
loop divides by the step's pairs) and, under `logged`, the rewards and log-probs the loop logs
each step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.train.loss import (
    DEFAULT_CHUNK_SIZE,
    CausalLMLoss,
    CrossEntropy,
    chunked_cross_entropy,
    sequence_logps,
)

PREFERENCE_LOSSES = ("dpo", "ipo", "simpo")


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
            "logged": _pair_scalars(chosen_rewards, rejected_rewards, sums.detach(), pairs),
        }
        if reference is not None:
            out["reference_logps"] = reference.detach()
        return out


def _pair_scalars(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, logps: torch.Tensor, pairs: int
) -> dict[str, tuple[torch.Tensor, int]]:
    """What the loop logs each step, per pair (TRL's rewards/chosen, rewards/rejected, rewards/margins,
    logps/chosen, logps/rejected): sums over the batch's pairs, with the pairs to divide by."""
    return {
        "chosen_reward": (chosen_rewards.sum(), pairs),
        "rejected_reward": (rejected_rewards.sum(), pairs),
        "reward_margin": ((chosen_rewards - rejected_rewards).sum(), pairs),
        "chosen_logps": (logps[:pairs].sum(), pairs),
        "rejected_logps": (logps[pairs:].sum(), pairs),
    }


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
