"""The policy losses (train/policy_loss.py) equal their published formulas, computed here by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.train.policy_loss import (
    PolicySettings,
    group_advantages,
    policy_objective,
    token_weights,
    zero_spread_groups,
)

# Three completions of different lengths; per-token log-probs now and when sampled.
LENGTHS = [3, 1, 4]
ADVANTAGES = [1.5, -0.5, -1.0]
MAX_TOKENS = 6


def _tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    total = sum(LENGTHS)
    old = -torch.rand(total, generator=generator, dtype=torch.float64) * 2
    logps = (
        old + (torch.rand(total, generator=generator, dtype=torch.float64) - 0.5) * 0.8
    )  # ratios ~0.67-1.5
    ref = old + (torch.rand(total, generator=generator, dtype=torch.float64) - 0.5) * 0.4
    return logps, old, ref


def _per_completion(values: torch.Tensor) -> list[list[float]]:
    out, start = [], 0
    for length in LENGTHS:
        out.append(values[start : start + length].tolist())
        start += length
    return out


def _clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def _reference_loss(loss: str, logps, old, ref, eps_low: float, eps_high: float, beta: float) -> float:
    """The formula of each paper, term by term in plain Python."""
    lp, ol, rf = _per_completion(logps), _per_completion(old), _per_completion(ref)
    n = len(LENGTHS)

    def term(i: int, t: int) -> float:
        ratio = math.exp(lp[i][t] - ol[i][t])
        a = ADVANTAGES[i]
        value = -min(ratio * a, _clip(ratio, 1 - eps_low, 1 + eps_high) * a)
        kl = math.exp(rf[i][t] - lp[i][t]) - (rf[i][t] - lp[i][t]) - 1
        return value + beta * kl

    if loss == "grpo":  # mean over each completion's tokens, then over completions
        return sum(sum(term(i, t) for t in range(LENGTHS[i])) / LENGTHS[i] for i in range(n)) / n
    if loss == "dr_grpo":  # a constant normaliser: completions x the completion budget
        return sum(term(i, t) for i in range(n) for t in range(LENGTHS[i])) / (n * MAX_TOKENS)
    if loss == "dapo":  # every token of the batch counts once
        return sum(term(i, t) for i in range(n) for t in range(LENGTHS[i])) / sum(LENGTHS)
    assert loss == "gspo"  # one ratio per sequence: exp of the mean token log-ratio
    total = 0.0
    for i in range(n):
        s = math.exp(sum(lp[i][t] - ol[i][t] for t in range(LENGTHS[i])) / LENGTHS[i])
        a = ADVANTAGES[i]
        total += -min(s * a, _clip(s, 1 - eps_low, 1 + eps_high) * a)
        kl = sum(math.exp(rf[i][t] - lp[i][t]) - (rf[i][t] - lp[i][t]) - 1 for t in range(LENGTHS[i]))
        total += beta * kl / LENGTHS[i]
    return total / n


def _ours(settings: PolicySettings, logps, old, ref, micro_batches: list[list[int]]) -> float:
    """Our loss over the given split of completions into micro-batches, summed as the step does."""
    total = 0.0
    for indices in micro_batches:
        lengths = [LENGTHS[i] for i in indices]
        starts = [sum(LENGTHS[:i]) for i in indices]
        take = torch.tensor([s + t for s, n in zip(starts, lengths, strict=True) for t in range(n)])
        weights = torch.tensor(token_weights(lengths, settings, LENGTHS), dtype=torch.float64)
        advantages = torch.tensor(
            [ADVANTAGES[i] for i in indices for _ in range(LENGTHS[i])], dtype=torch.float64
        )
        index = torch.tensor([k for k, n in enumerate(lengths) for _ in range(n)])
        loss, _ = policy_objective(
            logps[take], old[take], advantages, weights, index, settings, len(LENGTHS), ref[take]
        )
        total += float(loss)
    return total


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo", "gspo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_each_loss_equals_its_formula_in_one_batch_and_accumulated(loss: str, beta: float) -> None:
    logps, old, ref = _tokens(seed=1)
    # gspo's tiny published range would clip every sequence here; a wide one exercises both sides.
    settings = PolicySettings.for_loss(loss, 0.25 if loss == "gspo" else None, None, beta, MAX_TOKENS)
    expected = _reference_loss(loss, logps, old, ref, settings.epsilon_low, settings.epsilon_high, beta)
    assert _ours(settings, logps, old, ref, [[0, 1, 2]]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # Gradient accumulation: the same loss from completions split over micro-batches.
    assert _ours(settings, logps, old, ref, [[0], [1, 2]]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_dapo_clips_higher_above_than_below() -> None:
    settings = PolicySettings.for_loss("dapo", None, None, 0.0, MAX_TOKENS)
    assert (settings.epsilon_low, settings.epsilon_high) == (0.2, 0.28)
    assert PolicySettings.for_loss("gspo", None, None, 0.0, 8).epsilon_low == 3e-4
    # A token whose ratio is 1.25 with a positive advantage: inside DAPO's range, outside GRPO's.
    logps, old = torch.tensor([math.log(1.25)]), torch.tensor([0.0])
    one = (torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0]))
    dapo, _ = policy_objective(logps, old, *one, settings, 1)
    grpo, _ = policy_objective(logps, old, *one, PolicySettings.for_loss("grpo", None, None, 0.0, 8), 1)
    assert float(dapo) == pytest.approx(-1.25) and float(grpo) == pytest.approx(-1.2)


def test_the_gradient_at_ratio_one_is_the_advantage_weighted_log_likelihood() -> None:
    """One pass over the rollout (old = the policy's own detached log-probs): d loss / d logp_t = -A w_t."""
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    weights = torch.tensor([0.5, 0.5, 1.0])
    advantages = torch.tensor([2.0, 2.0, -1.0])
    loss, _ = policy_objective(
        logps, logps.detach(), advantages, weights, torch.tensor([0, 0, 1]), PolicySettings(), 2
    )
    loss.backward()
    assert torch.allclose(logps.grad, -advantages * weights)


def test_group_advantages_and_zero_spread_groups() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    scaled = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # the unbiased std, as TRL
    assert torch.allclose(scaled[:4], (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-4))
    assert torch.equal(scaled[4:], torch.zeros(4))  # an all-equal group: 0, never NaN
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert zero_spread_groups(rewards, 4).tolist() == [False, True]
