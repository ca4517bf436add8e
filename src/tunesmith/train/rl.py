"""The on-policy recipe (task reward): the fit phase of a run that learns from rewards.

train/run.py runs every other phase (data, model, run directory, evaluation before and after,
final model, report) as for any task; a task that declares `on_policy` trains here instead of
in the supervised loop. One step, read top to bottom in `fit_on_policy`:

    rollout     this rank's prompts of the step (the seeded schedule), a group of completions each
    rewards     every reward function on every completion; the weighted total
    advantages  each total against its group's (zero-spread groups counted, optionally left out)
    update      `num_iterations` optimizer updates on the same completions: clipped policy loss
                (train/policy_loss.py), optional KL to the reference, gradient clipping
    log         the loss, each reward's mean and std, the zero-spread share, where the time went

Sampling draws from a generator seeded by (seed, step, rank), never from the global RNG, so a
run resumed from a checkpoint samples what the uninterrupted run sampled. Before the first step
a pre-flight samples groups for a few dozen prompts with the base model and says whether any
group's rewards differ (the only groups that teach anything).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.prompts import PromptExample
from tunesmith.data.templates import end_of_turn_ids
from tunesmith.errors import NonFiniteError, TrainingInterrupted
from tunesmith.evaluate.rewards import Reward, RewardScores, build_rewards, score
from tunesmith.train.checkpoint import TrainerState
from tunesmith.train.loss import batch_to_device
from tunesmith.train.policy_loss import group_advantages, token_weights, zero_spread_groups
from tunesmith.train.rollout import HFSampler, Rollout, Sampler, SamplingSettings

if TYPE_CHECKING:
    from tunesmith.config import Config
    from tunesmith.tasks import PreparedData
    from tunesmith.train.run import Run

PREFLIGHT_MIN_SPREAD = 0.1  # under this share of groups with differing rewards, RL has little to learn from


def make_sampler(model: Any, tokenizer: Any, template: Any, config: Config, greedy: bool = False) -> Sampler:
    """Our sampler on the model being trained (the seam where another engine plugs in)."""
    reward = config.reward
    settings = SamplingSettings(
        max_new_tokens=reward.max_completion_tokens,
        temperature=0.0 if greedy else reward.temperature,
        top_p=reward.top_p,
        stop=tuple(reward.stop),
        end_ids=tuple(end_of_turn_ids(tokenizer, template)),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    return HFSampler(model, tokenizer, settings)


def score_rollout(rewards: list[Reward], rollout: Rollout, prompts: list[PromptExample]) -> RewardScores:
    """Every reward of every completion; each completion gets its prompt's columns (and tools)."""
    owners = [prompts[i // rollout.group_size] for i in range(len(rollout.completion_ids))]
    return score(
        rewards,
        [p.record.prompt for p in owners],
        rollout.texts,
        rollout.completion_ids,
        [{**p.record.columns, "tools": p.record.tools} for p in owners],
    )


def sample_in_chunks(
    sampler: Sampler, prompts: list[PromptExample], config: Config, generator: Any
) -> Rollout:
    """The step's rollout, train.batch_size prompts (and their groups) at a time: the KV cache of
    one micro-batch's worth of answers at most, as the memory estimate counts."""
    size, group = max(1, config.train.batch_size), config.reward.group_size
    parts = [sampler.sample([p.prompt_ids for p in prompts[i : i + size]], group, generator)
             for i in range(0, len(prompts), size)]  # fmt: skip
    return Rollout(
        group,
        [ids for part in parts for ids in part.completion_ids],
        [cut for part in parts for cut in part.truncated],
        [text for part in parts for text in part.texts],
    )


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The sampling RNG of one step on one rank: independent of everything before it (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)


# --------------------------------------------------------------------------------------------
# From a rollout to micro-batches


@dataclass
class Completion:
    prompt_index: int  # the prompt's place in the step (its group)
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float


def keep_completions(
    rollout: Rollout, totals: torch.Tensor, prompts: list[PromptExample], config: Config
) -> tuple[list[Completion], dict[str, float]]:
    """The completions the step trains on, with their advantages; counts of what was left out."""
    reward, group = config.reward, config.reward.group_size
    advantages = group_advantages(totals, group, scale=reward.loss != "dr_grpo")
    flat = zero_spread_groups(totals, group)
    kept = []
    for index, ids in enumerate(rollout.completion_ids):
        if reward.skip_zero_spread and bool(flat[index // group]):
            continue
        if reward.mask_truncated and rollout.truncated[index]:
            continue
        if not ids:
            continue
        kept.append(
            Completion(index // group, prompts[index // group].prompt_ids, ids, float(advantages[index]))
        )
    counts = {
        "zero_spread_groups": float(flat.sum()),
        "groups": float(flat.numel()),
        "truncated": float(sum(rollout.truncated)),
        "completions": float(len(rollout.completion_ids)),
        "completion_tokens": float(sum(len(ids) for ids in rollout.completion_ids)),
    }
    return kept, counts


def collate_completions(
    completions: list[Completion], weights: list[list[float]], num_step_completions: int, pad_id: int
) -> dict[str, Any]:
    """Each prompt once (left-padded) and its completions as sampled (right-padded), see
    policy_loss.CompletionBatch; per completion token (flat, row order): its advantage, weight and
    completion index."""
    order = list(dict.fromkeys(c.prompt_index for c in completions))
    prompts = {c.prompt_index: c.prompt_ids for c in completions}
    prompt_width = max(len(ids) for ids in prompts.values())
    prompt_ids = torch.full((len(order), prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(order), prompt_width), dtype=torch.long)
    for row, index in enumerate(order):
        prompt_ids[row, prompt_width - len(prompts[index]) :] = torch.tensor(prompts[index])
        prompt_mask[row, prompt_width - len(prompts[index]) :] = 1
    width = max(len(c.completion_ids) for c in completions)
    completion_ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), width), dtype=torch.long)
    advantages: list[float] = []
    sequence_index: list[int] = []
    for row, completion in enumerate(completions):
        completion_ids[row, : len(completion.completion_ids)] = torch.tensor(completion.completion_ids)
        completion_mask[row, : len(completion.completion_ids)] = 1
        advantages += [completion.advantage] * len(completion.completion_ids)
        sequence_index += [row] * len(completion.completion_ids)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "owner": torch.tensor([order.index(c.prompt_index) for c in completions], dtype=torch.long),
        "advantages": torch.tensor(advantages),
        "weights": torch.tensor([w for row in weights for w in row]),
        "sequence_index": torch.tensor(sequence_index, dtype=torch.long),
        "num_step_completions": num_step_completions,
    }


def micro_batches(
    completions: list[Completion], config: Config, parallel: Any, pad_id: int
) -> list[dict[str, Any]]:
    """The step's completions in micro-batches of train.batch_size prompts' groups, weights
    normalised over the completions of every rank (so accumulation and ranks sum exactly)."""
    from tunesmith.train.policy_loss import PolicySettings

    reward = config.reward
    settings = PolicySettings.for_loss(reward.loss, reward.epsilon, reward.epsilon_high, reward.beta,
                                       reward.max_completion_tokens)  # fmt: skip
    lengths = [len(c.completion_ids) for c in completions]
    num_completions, num_tokens = parallel.sum_over_ranks([float(len(lengths)), float(sum(lengths))])
    # token_weights needs only the step's count and total tokens: a stand-in list of that shape.
    step_lengths = _shape_of(int(num_completions), int(num_tokens))
    prompts = list(dict.fromkeys(c.prompt_index for c in completions))
    size = max(1, config.train.batch_size)
    batches = []
    for start in range(0, len(prompts), size):
        members = set(prompts[start : start + size])
        chunk = [c for c in completions if c.prompt_index in members]
        weights = token_weights([len(c.completion_ids) for c in chunk], settings, step_lengths)
        per_row, position = [], 0
        for completion in chunk:
            per_row.append(weights[position : position + len(completion.completion_ids)])
            position += len(completion.completion_ids)
        batches.append(collate_completions(chunk, per_row, int(num_completions), pad_id))
    return batches


def _shape_of(count: int, total: int) -> list[int]:
    """`count` lengths summing to `total` (what token_weights reads of the step: len and sum)."""
    if count == 0:
        return []
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


# --------------------------------------------------------------------------------------------
# The pre-flight


def preflight(
    model: Any, tokenizer: Any, prepared: PreparedData, config: Config, rewards: list[Reward]
) -> dict[str, Any]:
    """Sample a group for up to `reward.preflight_prompts` training prompts with the model as it is:
    each reward's rate and the share of groups whose rewards differ; a verdict when too few do."""
    assert prepared.prompts is not None, "an on-policy task's prepare_data sets the prompts"
    prompts = list(prepared.prompts.train[: config.reward.preflight_prompts])
    sampler = make_sampler(model, tokenizer, prepared.template, config)
    generator = step_generator(config.train.seed, -1, 0)
    batch = max(1, config.train.batch_size)
    spreads: list[bool] = []
    totals: list[float] = []
    per_reward: dict[str, list[float]] = {r.name: [] for r in rewards}
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        rollout = sampler.sample([p.prompt_ids for p in chunk], config.reward.group_size, generator)
        scores = score_rollout(rewards, rollout, chunk)
        total = torch.tensor(scores.total)
        spreads += (~zero_spread_groups(total, config.reward.group_size)).tolist()
        totals += scores.total
        for name, values in zip(scores.names, scores.per_reward, strict=True):
            per_reward[name] += [v for v in values if not math.isnan(v)]
    share = sum(spreads) / max(len(spreads), 1)
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "group_size": config.reward.group_size,
        "groups_with_spread": share,
        "reward_mean": sum(totals) / max(len(totals), 1),
        "rewards": {name: (sum(v) / len(v) if v else None) for name, v in per_reward.items()},
    }
    result["verdict"] = preflight_verdict(share, config)
    return result


def preflight_verdict(share: float, config: Config) -> str | None:
    """What to do when too few groups differ in reward (None when enough do)."""
    if share >= PREFLIGHT_MIN_SPREAD:
        return None
    return (
        f"only {share:.0%} of the groups got differing rewards from the base model: RL learns only from "
        "those; warm the model up on worked answers first (task instruct), use a softer reward (partial "
        f"credit, a format reward), allow longer completions (reward.max_completion_tokens, now "
        f"{config.reward.max_completion_tokens}) or larger groups (reward.group_size, now {config.reward.group_size})"
    )


def _prompts(current: Run) -> Any:
    assert current.prepared.prompts is not None, "an on-policy task's prepare_data sets the prompts"
    return current.prepared.prompts


# --------------------------------------------------------------------------------------------
# The fit phase


def fit_on_policy(
    current: Run, schedule: Any, total_steps: int, checkpoint: Path | None, log: Any, before: dict[str, Any]
) -> tuple[TrainerState, dict[str, Any]]:
    """Optimizer, scheduler, resume state, the pre-flight, the steps, the final checkpoint."""
    import json

    from tunesmith.train import distributed
    from tunesmith.train.loop import stop_on_signals
    from tunesmith.train.optim import build_optimizer, build_scheduler

    config, parallel, progress = current.config, current.parallel, current.progress
    state = TrainerState(step=0, total_steps=total_steps)
    train_module = distributed.parallelize(parallel, current.loss_module, config.distributed)
    optimizer = build_optimizer(current.loss_module, config.train, current.device)
    # Each step makes num_iterations updates: the schedule counts updates.
    scheduler = build_scheduler(optimizer, config.train, total_steps * config.reward.num_iterations)
    if checkpoint is not None:
        state = distributed.load_checkpoint(checkpoint, parallel, current.loss_module, optimizer, scheduler)
        state.total_steps = total_steps
        progress.message(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
        before_file = current.run_dir.eval_file("before")
        before = json.loads(before_file.read_text()) if before_file.is_file() else {}
    rewards = build_rewards(config.reward.functions, config.reward.max_completion_tokens)
    if checkpoint is None and config.reward.preflight_prompts and parallel.is_main:
        found = preflight(current.model, current.tokenizer, current.prepared, config, rewards)
        report_preflight(current, found)
    sampler = make_sampler(current.model, current.tokenizer, current.prepared.template, config)
    step = OnPolicyStep(current, train_module, optimizer, scheduler, sampler, rewards, schedule)

    def save_checkpoint(now: TrainerState) -> Path:
        started = time.perf_counter()
        path = distributed.save_checkpoint(
            current.run_dir.checkpoints, parallel, optimizer, scheduler, now, config.train.keep_last
        )
        current.checkpoint_seconds += time.perf_counter() - started
        return path

    progress.start(total_steps, state.step, "train")
    try:
        with stop_on_signals() as stop:
            while state.step < total_steps:
                record = step.run(state)
                if state.step % config.train.log_every == 0 or state.step == total_steps:
                    log(record)
                progress.step(state.step, record)
                if config.train.eval_every and state.step % config.train.eval_every == 0:
                    log({"step": state.step, **evaluate_during(current)})
                stopping = parallel.sum_over_ranks([float(bool(stop))])[0] > 0
                every = config.train.save_every
                if stopping or (every and state.step % every == 0):
                    path = save_checkpoint(state)
                    if stopping:
                        raise TrainingInterrupted(str(path))
    finally:
        progress.close()
    save_checkpoint(state)  # the final checkpoint: resuming a finished run is a no-op
    return state, before


def report_preflight(current: Run, result: dict[str, Any]) -> None:
    """eval/preflight.json and the console lines: each reward's rate, the share of groups that differ."""
    from tunesmith.train import rundir

    rundir.write_json(current.run_dir.eval_file("preflight"), result)
    rates = ", ".join(f"{name} {rate:.2f}" for name, rate in result["rewards"].items() if rate is not None)
    current.progress.message(
        f"pre-flight: {result['prompts']} prompts x {result['group_size']}: rewards {rates or 'none apply'}; "
        f"{result['groups_with_spread']:.0%} of groups have differing rewards"
    )
    if result["verdict"]:
        current.progress.message(f"warning: pre-flight: {result['verdict']}", "warning")


def evaluate_during(current: Run) -> dict[str, Any]:
    """The task's held-out metrics mid-run, off the training RNG (resume replays the same steps)."""
    from tunesmith.tasks import EvalContext

    started = time.perf_counter()
    context = EvalContext(
        current.model,
        current.loss_module,
        current.prepared,
        current.tokenizer,
        current.config,
        current.device,
    )
    devices = [torch.cuda.current_device()] if current.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        metrics = current.task.evaluate(context, "during")
    current.eval_seconds += time.perf_counter() - started
    return {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


class OnPolicyStep:
    """One step: rollout, rewards, advantages, `num_iterations` updates; returns the step's record."""

    def __init__(self, current: Run, train_module: Any, optimizer: Any, scheduler: Any, sampler: Sampler,
                 rewards: list[Reward], schedule: Any) -> None:  # fmt: skip
        self.current, self.train_module, self.optimizer, self.scheduler = (
            current,
            train_module,
            optimizer,
            scheduler,
        )
        self.sampler, self.rewards, self.schedule = sampler, rewards, schedule
        self.parameters = [p for p in current.loss_module.parameters() if p.requires_grad]

    def run(self, state: TrainerState) -> dict[str, Any]:
        current, config = self.current, self.current.config
        parallel, prepared = current.parallel, current.prepared
        started = time.perf_counter()
        rows = [i for micro in parallel.shard(self.schedule.rows_for_step(state.step)) for i in micro]
        prompts = [_prompts(current).train[j] for i in rows for j in prepared.rows[i]]
        generator = step_generator(config.train.seed, state.step, parallel.rank)
        # The rollout: sampled by the policy as it is now (eval mode: no dropout in the answers).
        rollout = sample_in_chunks(self.sampler, prompts, config, generator)
        sampled = time.perf_counter()
        scores = score_rollout(self.rewards, rollout, prompts)
        scored = time.perf_counter()
        kept, counts = keep_completions(rollout, torch.tensor(scores.total), prompts, config)
        (num_kept,) = parallel.sum_over_ranks([float(len(kept))])
        record: dict[str, Any] = {"step": state.step + 1}
        if num_kept == 0:
            # Every group was left out (skip_zero_spread / mask_truncated): nothing to learn from.
            record["skipped"] = "no completion to train on"
            for _ in range(config.reward.num_iterations):
                self.scheduler.step()
        else:
            if not kept:  # other ranks train: take part with a completion that weighs nothing
                kept = [_idle_completion(rollout, prompts)]
            record |= self.update(micro_batches(kept, config, parallel, prepared.pad_id), state)
        state.step += 1
        finished = time.perf_counter()
        record |= scores.stats()
        record |= _step_counts(counts, len(kept), (sampled - started, scored - sampled, finished - scored))
        record["tokens_per_second"] = (counts["completion_tokens"] + sum(len(p.prompt_ids) for p in prompts)
                                       * config.reward.group_size) / max(finished - started, 1e-9)  # fmt: skip
        return record

    def update(self, batches: list[dict[str, Any]], state: TrainerState) -> dict[str, Any]:
        """num_iterations optimizer updates on the step's micro-batches; the loss and clip figures."""
        current, config = self.current, self.current.config
        loss_module, parallel = current.loss_module, current.parallel
        batches = [batch_to_device(b, current.device) for b in batches]
        for batch in batches:
            if config.reward.beta > 0:
                batch["ref_logps"] = loss_module.logps(batch, use_reference=True)
            if config.reward.num_iterations > 1:  # the sampling policy's log-probs, before any update
                batch["old_logps"] = loss_module.logps(batch)
        clip_to = config.train.max_grad_norm if config.train.max_grad_norm > 0 else math.inf
        totals = {"loss": 0.0, "clipped": 0.0, "ratios": 0.0, "kl": 0.0}
        for _ in range(config.reward.num_iterations):
            for index, batch in enumerate(batches):
                with parallel.micro_batch(index, len(batches)):
                    out = self.train_module(**batch)
                    (out["loss"] * parallel.gradient_scale).backward()
                for key in totals:
                    totals[key] += float(out[key].detach()) if key in out else 0.0
                del out
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip_to))
            loss, grad_norm = parallel.sum_over_ranks([totals["loss"], grad_norm])
            lr = self.optimizer.param_groups[0]["lr"]
            if math.isfinite(loss) and math.isfinite(grad_norm):
                self.optimizer.step()
            else:  # the bad update is never applied: stop, or (train.on_nonfinite: skip) go on without it
                self._nonfinite(state, loss, grad_norm)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        passes = config.reward.num_iterations
        clipped, ratios, kl = parallel.sum_over_ranks([totals["clipped"], totals["ratios"], totals["kl"]])
        record = {
            "loss": loss / passes,
            "lr": lr,
            "grad_norm": grad_norm,
            "clip_fraction": clipped / max(ratios, 1),
        }
        if config.reward.beta > 0:
            record["kl"] = kl / passes
        return record

    def _nonfinite(self, state: TrainerState, loss: float, grad_norm: float) -> None:
        train = self.current.config.train
        state.skipped_steps += 1
        if train.on_nonfinite != "skip" or state.skipped_steps > train.max_skipped_steps:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"step {state.step + 1}: non-finite loss or gradient (loss={loss}, grad_norm={grad_norm}); "
                "the update was not applied; lower train.learning_rate, or set train.on_nonfinite: skip"
            )


def _idle_completion(rollout: Rollout, prompts: list[PromptExample]) -> Completion:
    ids = rollout.completion_ids[0] or [0]
    return Completion(0, prompts[0].prompt_ids, ids, 0.0)


def _step_counts(counts: dict[str, float], trained: int, seconds: tuple[float, float, float]) -> dict:
    """The step's shares and where its time went: sampling, scoring, the update."""
    return {
        "zero_spread_share": counts["zero_spread_groups"] / max(counts["groups"], 1.0),
        "truncated_share": counts["truncated"] / max(counts["completions"], 1.0),
        "completion_length": counts["completion_tokens"] / max(counts["completions"], 1.0),
        "num_trained_completions": trained,
        "seconds_sampling": seconds[0],
        "seconds_scoring": seconds[1],
        "seconds_update": seconds[2],
    }
