"""Learning from rewards: prompts and reward functions; the policy trains on its own sampled answers.

The user brings prompts (a `prompt` as text or messages, plus any columns: a reference answer, a
label, tools) and rewards (`reward.functions`: built-ins or their own Python functions). The
task declares `on_policy` (tasks/__init__.py): train/run.py's recipe runs every phase as for any
task but the fit, which is train/rl.py's (rollout -> rewards -> group advantages -> clipped policy loss).

Evaluation follows one fixed protocol before and after: the first `reward.eval_prompts` held-out
prompts, one greedy completion each (same budget, stop strings and rewards as training), each
reward's mean (its rate, for 0/1 rewards), the total, and sample completions for the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import Config, TrainSource
from tunesmith.data.formats import PromptRecord
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.prompts import PromptExample, count_leaked, load_prompts, tokenize_prompts
from tunesmith.data.templates import IGNORE_INDEX, ChatTemplate, resolve_chat_template
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.evaluate.rewards import build_rewards, reference_parses
from tunesmith.models.adapters import apply_adapter
from tunesmith.models.load import load_causal_lm
from tunesmith.progress import Progress
from tunesmith.tasks import (
    DataStats,
    EvalContext,
    FitContext,
    Phase,
    PreparedData,
    PromptData,
    Task,
    no_trained_settings,
    task_info,
)
from tunesmith.tasks.mixing import load_mixed, source_of_examples
from tunesmith.train.policy_loss import PolicyLoss, PolicySettings
from tunesmith.train.rl import make_sampler, score_rollout

if TYPE_CHECKING:
    from tunesmith.tasks import TrainedModel
    from tunesmith.train.loss import CrossEntropy


def prepare_data(
    config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> PreparedData:
    data, reward = config.data, config.reward
    budget = data.max_seq_len - reward.max_completion_tokens
    if budget < 1:
        raise UserError(
            f"config key `data.max_seq_len` ({data.max_seq_len}) leaves no room for a prompt beside "
            f"reward.max_completion_tokens ({reward.max_completion_tokens}); raise it or lower the completions"
        )
    # The rewards load now (a user function's module runs here): a bad one stops the run before anything is written.
    build_rewards(reward.functions, reward.max_completion_tokens)
    policy = ErrorPolicy(data.on_error, data.max_skipped)

    def load(source: TrainSource, what: str) -> list[PromptRecord]:
        fields = data.fields if source.fields is None else source.fields
        return load_prompts(source.path, fields, reward.prompt_template, data.system_prompt, policy, what)

    mixed = load_mixed(config, "point it at your prompts file", load)  # weighted sources: data/mix.py
    records, held = mixed.train, mixed.eval or []
    if data.eval is not None:
        held = load_prompts(
            data.eval, data.fields, reward.prompt_template, data.system_prompt, policy, "data.eval"
        )
    template = resolve_chat_template(tokenizer, data.chat_template, data.chat_template_kwargs)
    train, train_stats = tokenize_prompts(records, tokenizer, template, budget)
    evaluation, eval_stats = tokenize_prompts(held, tokenizer, template, budget) if held else ([], None)
    if not train:
        raise UserError(
            f"data.train: every prompt is over the length budget (data.max_seq_len {data.max_seq_len} less "
            f"reward.max_completion_tokens {reward.max_completion_tokens}); raise data.max_seq_len"
        )
    if eval_stats is not None:
        eval_stats.num_leaked = count_leaked(train, evaluation)
    stats = DataStats(
        train_stats,
        eval_stats,
        skipped_records=list(policy.skipped),
        chat_template=template.origin,
        mix=mixed.mix,
    )
    stats.warnings += data_warnings(config, train)
    return PreparedData(
        train=[_as_example(e) for e in train],
        eval=[_as_example(e) for e in evaluation],
        rows=[[i] for i in range(len(train))],  # one prompt per row: the schedule deals prompts to steps
        collate=lambda rows: _collate_prompts(
            [train[i] for row in rows for i in row], tokenizer.pad_token_id
        ),
        stats=stats,
        pad_id=tokenizer.pad_token_id,
        template=template,
        eval_records=[e.record for e in evaluation],
        prompts=PromptData(train=train, eval=evaluation),
        source_of=source_of_examples(train, mixed.origin),
    )


def data_warnings(config: Config, train: list[PromptExample]) -> list[str]:
    """Prompts whose reference an answer_match reward cannot read (they earn no reward); the rest of
    the prompt data's problems (length budget, duplicates, leakage) are the data doctor's."""
    warnings = []
    for spec in config.reward.functions:
        if spec.function != "answer_match":
            continue
        column = spec.reference or "answer"
        unreadable = [e.source for e in train if not reference_parses(e.record.columns.get(column))]
        if unreadable:
            warnings.append(
                f"reward answer_match: {len(unreadable)} prompts have no reference it can read in column "
                f"`{column}` (e.g. {', '.join(unreadable[:2])}); they earn no reward"
            )
    return warnings


def _as_example(example: PromptExample) -> Example:
    return Example(example.prompt_ids, [IGNORE_INDEX] * len(example.prompt_ids), source=example.source)


def _collate_prompts(prompts: list[PromptExample], pad_id: int) -> dict[str, Any]:
    """Prompts as a padded LM batch (what task-blind readers of `collate` get: previews, probes)."""
    width = max(len(p.prompt_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt.prompt_ids)] = torch.tensor(prompt.prompt_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "num_targets": 0}


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> TrainedModel:
    model = load_causal_lm(model_path, config.model, device)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return apply_adapter(model, config.adapter, task_type="CAUSAL_LM")


def make_loss(model: nn.Module, config: Config, cross_entropy: CrossEntropy | None = None) -> nn.Module:
    reward = config.reward
    settings = PolicySettings.for_loss(
        reward.loss, reward.epsilon, reward.epsilon_high, reward.beta, reward.max_completion_tokens
    )
    # The reference of the KL term: the base model under the disabled adapter (LoRA), else a frozen copy.
    reference = (
        "none"
        if reward.beta == 0
        else "adapter_disabled"
        if config.adapter.method == "lora"
        else "frozen_copy"
    )
    return PolicyLoss(model, settings, reference)


@torch.no_grad()
def held_out_rewards(
    model: nn.Module, tokenizer: Any, prepared: PreparedData, config: Config, prompts: list[PromptExample]
) -> dict[str, Any]:
    """The fixed protocol: one greedy completion per held-out prompt, scored by the run's rewards."""
    rewards = build_rewards(config.reward.functions, config.reward.max_completion_tokens)
    sampler = make_sampler(model, tokenizer, _template(prepared), config, greedy=True)
    texts, totals, truncated, lengths = [], [], 0, 0
    per_reward: dict[str, list[float]] = {r.name: [] for r in rewards}
    for start in range(0, len(prompts), max(1, config.train.batch_size * 2)):
        chunk = prompts[start : start + max(1, config.train.batch_size * 2)]
        rollout = sampler.sample([p.prompt_ids for p in chunk], 1)
        scores = score_rollout(rewards, rollout, chunk)
        texts += rollout.texts
        totals += scores.total
        truncated += sum(rollout.truncated)
        lengths += sum(len(ids) for ids in rollout.completion_ids)
        for name, values in zip(scores.names, scores.per_reward, strict=True):
            per_reward[name] += values
    count = max(len(prompts), 1)
    metrics: dict[str, Any] = {
        "num_prompts": len(prompts),
        "reward_mean": sum(totals) / count,
        "truncated_share": truncated / count,
        "completion_length": lengths / count,
    }
    for name, values in per_reward.items():
        applied = [v for v in values if not math.isnan(v)]
        metrics[f"reward_{name}"] = sum(applied) / len(applied) if applied else None
    metrics["completions"] = [
        {"prompt": p.record.prompt[-1]["content"], "output": text, "reward": total, "source": p.source}
        for p, text, total in zip(prompts, texts, totals, strict=True)
    ]
    return metrics


def evaluate(ctx: EvalContext, phase: Phase = "after") -> dict[str, Any]:
    """Held-out rewards under the fixed protocol; sample completions before and after."""
    config = ctx.config
    prompts = _prompt_data(ctx.prepared).eval[: config.reward.eval_prompts]
    if not prompts:
        return {}
    metrics = held_out_rewards(ctx.model, ctx.tokenizer, ctx.prepared, config, prompts)
    completions = metrics.pop("completions")
    if phase != "during":
        metrics["generations"] = [
            {**item, "reference": _reference(p)}
            for item, p in zip(completions[: config.reward.sample_completions], prompts, strict=False)
        ]
    return metrics


def _reference(prompt: PromptExample) -> str:
    columns = prompt.record.columns
    value = next((columns[k] for k in ("answer", "label", "final_answer", "output") if k in columns), None)
    return "" if value is None else str(value)


def save_final(
    model: TrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    prepared: PreparedData,
    config: Config,
) -> None:
    """The same directory as instruct: a PEFT adapter or a full model, tokenizer and template."""
    from tunesmith.tasks import instruct

    instruct.save_final(model, tokenizer, out_dir, prepared, config)


def load_for_eval(target: Path, name: str, config: Config, device: str, prepared: PreparedData) -> nn.Module:
    from tunesmith.tasks import instruct

    return instruct.load_for_eval(target, name, config, device, prepared)


def measure_fit(ctx: FitContext) -> dict[str, Any]:
    """select's probe: the base model's greedy held-out reward under the run's rewards."""
    prompts = _prompt_data(ctx.prepared).eval[: ctx.sample]
    if not prompts:
        raise UserError("the data has too few prompts to hold a sample out; give at least 2")
    metrics = held_out_rewards(ctx.model, ctx.tokenizer, ctx.prepared, ctx.config, prompts)
    metrics.pop("completions")
    return metrics


def recommend_epochs(num_examples: int, num_tokens: int) -> tuple[int, str]:
    return 1, "epochs 1: each step samples new answers; set train.max_steps for the budget"


def preview_label(prepared: PreparedData, example: Example) -> Any:
    return "prompt (answers are sampled while training)"


TASK = Task(
    info=task_info("reward"),
    prepare_data=prepare_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    save_final=save_final,
    load_for_eval=load_for_eval,
    measure_fit=measure_fit,
    trained_data_settings=no_trained_settings,
    recommend_epochs=recommend_epochs,
    preview_label=preview_label,
)


def _prompt_data(prepared: PreparedData) -> PromptData:
    assert prepared.prompts is not None, "reward's prepare_data sets the prompts"
    return prepared.prompts


def _template(prepared: PreparedData) -> ChatTemplate:
    assert prepared.template is not None, "reward's prepare_data sets the chat template"
    return prepared.template
