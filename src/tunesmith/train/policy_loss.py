"""Policy-gradient losses on sampled completions (task reward): GRPO and its current variants.

Every completion token t of completion i has the policy's log-prob, the log-prob when it was
sampled (`old`), and the advantage A_i of its completion (its reward against its group's:
`group_advantages`). With the ratio r = exp(logp - old) and clip range [1 - eps_low, 1 + eps_high]:

    grpo     sum_i 1/|o_i| sum_t  -min(r A_i, clip(r) A_i)        / num_completions
    dr_grpo  sum_i sum_t          -min(r A_i, clip(r) A_i)        / (num_completions x max_tokens)
             advantages not divided by the group's std (Dr. GRPO, Liu et al. 2025)
    dapo     sum_i sum_t          -min(r A_i, clip(r) A_i)        / sum_i |o_i|   (token-level)
             with clip-higher: eps_high 0.28 > eps_low 0.2 (DAPO, Yu et al. 2025)
    gspo     sum_i -min(s_i A_i, clip(s_i) A_i) / num_completions, s_i = exp(mean_t (logp - old))
             one ratio per sequence, eps ~3e-4 (GSPO, Zheng et al. 2025)

The normalisers are those of the whole optimizer step, so the terms arrive as per-token weights
(`token_weights`): gradient accumulation over micro-batches and ranks sums exactly. With a KL
penalty (beta > 0), beta x k3 = exp(ref - logp) - (ref - logp) - 1 per token joins the per-token
term (grpo, dr_grpo, dapo: with the same weights; gspo: as grpo averages it).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.train.loss import DEFAULT_CHUNK_SIZE, target_logps

DEFAULT_EPSILON = {"grpo": 0.2, "dr_grpo": 0.2, "dapo": 0.2, "gspo": 3e-4}
DEFAULT_EPSILON_HIGH = {"dapo": 0.28}
STD_EPSILON = 1e-4  # added to a group's std before dividing (as TRL): an all-equal group gets 0, not NaN


@dataclass(frozen=True)
class PolicySettings:
    loss: str = "grpo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    max_completion_tokens: int = 128

    @classmethod
    def for_loss(
        cls, loss: str, epsilon: float | None, epsilon_high: float | None, beta: float, max_tokens: int
    ) -> PolicySettings:
        """Each loss's published clip range where none is given."""
        low = epsilon if epsilon is not None else DEFAULT_EPSILON[loss]
        high = epsilon_high if epsilon_high is not None else DEFAULT_EPSILON_HIGH.get(loss, low)
        return cls(loss, low, high, beta, max_tokens)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """Each reward less its group's mean, divided by the group's std (+1e-4) when `scale`."""
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + STD_EPSILON)
    return advantages.reshape(-1)


def zero_spread_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[num_groups] True where every completion of the group got the same reward (they teach nothing)."""
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < 1e-9


def token_weights(
    lengths: Sequence[int], settings: PolicySettings, step_lengths: Sequence[int]
) -> list[float]:
    """Per-token weights of completions with `lengths`, normalised over the step's completions
    (`step_lengths`: every completion trained this optimizer step, on every rank)."""
    num_completions = max(len(step_lengths), 1)
    weights = []
    for length in lengths:
        if settings.loss == "dapo":
            weight = 1.0 / max(sum(step_lengths), 1)
        elif settings.loss == "dr_grpo":
            weight = 1.0 / (num_completions * settings.max_completion_tokens)
        else:  # grpo, and gspo's KL term: each completion's mean, averaged over completions
            weight = 1.0 / (max(length, 1) * num_completions)
        weights += [weight] * length
    return weights


def policy_objective(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    sequence_index: torch.Tensor,
    settings: PolicySettings,
    num_step_completions: int,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch (already normalised for the step) and its clip and KL sums.

    Every argument but `settings` is per completion token, flat: `advantages` holds each token's
    completion's advantage, `sequence_index` its completion (0..n-1 within the micro-batch)."""
    log_ratio = logps - old_logps
    low, high = 1.0 - settings.epsilon_low, 1.0 + settings.epsilon_high
    if settings.loss == "gspo":
        count = int(sequence_index.max()) + 1 if sequence_index.numel() else 0
        sums = torch.zeros(count, dtype=logps.dtype, device=logps.device).index_add(
            0, sequence_index, log_ratio
        )
        lengths = torch.zeros(count, dtype=logps.dtype, device=logps.device).index_add(
            0, sequence_index, torch.ones_like(log_ratio)
        )
        ratio = torch.exp(sums / lengths.clamp(min=1))
        sequence_advantages = torch.zeros(count, dtype=logps.dtype, device=logps.device).index_copy(
            0, sequence_index, advantages
        )
        objective = torch.min(ratio * sequence_advantages, ratio.clamp(low, high) * sequence_advantages)
        loss = -objective.sum() / max(num_step_completions, 1)
    else:
        ratio = torch.exp(log_ratio)
        objective = torch.min(ratio * advantages, ratio.clamp(low, high) * advantages)
        loss = -(objective * weights).sum()
    clipped = ((ratio < low) | (ratio > high)).float().sum().detach()
    metrics = {"clipped": clipped, "ratios": torch.tensor(float(ratio.numel()))}
    if ref_logps is not None and settings.beta > 0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1.0
        kl_weights = weights  # gspo too: token_weights gives it grpo's per-completion means
        loss = loss + settings.beta * (kl * kl_weights).sum()
        metrics["kl"] = (kl.detach() * kl_weights).sum()
    return loss, metrics


@dataclass(frozen=True)
class CompletionBatch:
    """A micro-batch of completions grouped by prompt: each prompt once (left-padded), its answers
    as sampled (right-padded); `owner[i]` is completion i's prompt (row of `prompt_ids`)."""

    prompt_ids: torch.Tensor  # [P, Lp]
    prompt_mask: torch.Tensor  # [P, Lp], 0 on the left padding
    completion_ids: torch.Tensor  # [N, Lc]
    completion_mask: torch.Tensor  # [N, Lc], 0 after a completion's end
    owner: torch.Tensor  # [N]


def completion_logps(
    model: nn.Module, batch: CompletionBatch, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """log p(token) of every completion token, flat in row order (completion by completion).

    Each prompt runs through the decoder once; its KV cache is then repeated for its answers, which
    run on top of it (the gradient reaches the prompt's positions through the cache). A group of 8
    short answers to one long prompt costs about one prompt, not eight. The LM head runs only on
    the completion positions. With gradient checkpointing (no cache in training) every answer runs
    with its prompt, concatenated."""
    causal_lm = unwrap_causal_lm(model)
    if _checkpointing(causal_lm) and torch.is_grad_enabled():
        return _concatenated_logps(causal_lm, batch, chunk_size)
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    positions = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = decoder(
        input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=positions, use_cache=True
    )
    # The last prompt position predicts each answer's first token (left padding: the last column).
    hidden = [out.last_hidden_state[:, -1:].index_select(0, batch.owner)]
    if batch.completion_ids.shape[1] > 1:
        cache_key = "cache" if "cache" in out else "past_key_values"  # transformers 5 renamed it
        cache = out[cache_key]
        cache.reorder_cache(batch.owner)  # index_select: each answer gets its prompt's keys and values
        mask = torch.cat(
            [batch.prompt_mask.index_select(0, batch.owner), batch.completion_mask[:, :-1]], dim=1
        )
        start = batch.prompt_mask.sum(-1, keepdim=True).index_select(0, batch.owner)
        steps = start + torch.arange(batch.completion_ids.shape[1] - 1, device=start.device)[None]
        rest = decoder(
            input_ids=batch.completion_ids[:, :-1],
            attention_mask=mask,
            position_ids=steps,
            use_cache=True,
            **{cache_key: cache},
        )
        hidden.append(rest.last_hidden_state)
    states = torch.cat(hidden, dim=1)
    keep = batch.completion_mask.bool()
    logps, _ = target_logps(
        states[keep], causal_lm.get_output_embeddings(), batch.completion_ids[keep], chunk_size
    )
    return logps


def _checkpointing(model: Any) -> bool:
    """Whether activation checkpointing is on (transformers 5.x renamed the flag)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def _concatenated_logps(causal_lm: Any, batch: CompletionBatch, chunk_size: int) -> torch.Tensor:
    """The same log-probs with each answer run after its own copy of its prompt (right-padded rows)."""
    rows = []
    for index in range(batch.completion_ids.shape[0]):
        prompt = batch.prompt_ids[batch.owner[index]][batch.prompt_mask[batch.owner[index]].bool()]
        completion = batch.completion_ids[index][batch.completion_mask[index].bool()]
        rows.append((prompt, completion))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long, device=batch.prompt_ids.device)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for row, (prompt, completion) in enumerate(rows):
        input_ids[row, : len(prompt) + len(completion)] = torch.cat([prompt, completion])
        labels[row, len(prompt) : len(prompt) + len(completion)] = completion
        mask[row, : len(prompt) + len(completion)] = 1
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)[0]
    keep = labels[:, 1:] != IGNORE_INDEX
    logps, _ = target_logps(
        hidden[:, :-1][keep], causal_lm.get_output_embeddings(), labels[:, 1:][keep], chunk_size
    )
    return logps


class PolicyLoss(nn.Module):
    """The policy loss of a micro-batch of completions (a module, so DDP/FSDP can wrap it).

    `reference`: "none" (beta 0), "adapter_disabled" (LoRA: the base model under the adapter's
    `disable_adapter()`, no second copy of the weights) or "frozen_copy" (full finetuning)."""

    def __init__(self, model: nn.Module, settings: PolicySettings, reference: str = "none"):
        super().__init__()
        self.model, self.settings, self.reference = model, settings, reference
        self.frozen: list[nn.Module] = []  # a plain list: not a submodule, so never trained nor saved
        if reference == "frozen_copy":
            import copy

            frozen = copy.deepcopy(unwrap_causal_lm(model)).eval()
            frozen.requires_grad_(False)
            self.frozen.append(frozen)

    @torch.no_grad()
    def logps(self, batch: dict[str, Any], use_reference: bool = False) -> torch.Tensor:
        """The completion tokens' log-probs under the policy (or the reference), without gradients."""
        model: nn.Module = self.model
        context: Any = nullcontext()
        if use_reference and self.reference == "frozen_copy":
            model = self.frozen[0]
        elif use_reference and hasattr(self.model, "disable_adapter"):
            context = self.model.disable_adapter()  # type: ignore[operator]  # a PeftModel's context
        with context:
            return completion_logps(model, _completions(batch))

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        owner: torch.Tensor,
        advantages: torch.Tensor,
        weights: torch.Tensor,
        sequence_index: torch.Tensor,
        num_step_completions: int,
        old_logps: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        batch = CompletionBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, owner)
        logps = completion_logps(self.model, batch)
        # One pass over the rollout: the sampling policy is this one (ratio 1, the same gradient).
        old = old_logps if old_logps is not None else logps.detach()
        loss, metrics = policy_objective(
            logps, old, advantages, weights, sequence_index, self.settings, num_step_completions, ref_logps
        )
        return {"loss": loss, "num_tokens": torch.tensor(float(logps.numel())), **metrics}


def _completions(batch: dict[str, Any]) -> CompletionBatch:
    return CompletionBatch(
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
        batch["owner"],
    )
