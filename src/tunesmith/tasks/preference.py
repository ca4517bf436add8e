"""Preference tuning: pairs of a better and a worse reply, DPO / IPO / SimPO on reply log-probs.

The reference model never costs a second copy of the weights unless asked: with LoRA it is the
base model with the adapter disabled; with full finetuning its log-probs are computed once, when
the model is built (before any step), and cached on every pair (`preference.reference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import Config
from tunesmith.data.formats import PreferencePair
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.preference import (
    PairData,
    PairExample,
    collate_pairs,
    load_pairs,
    make_pair_rows,
    tokenize_pairs,
)
from tunesmith.data.templates import ChatTemplate, resolve_chat_template
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.evaluate.generation import generate_reply
from tunesmith.models.adapters import apply_adapter
from tunesmith.models.load import load_causal_lm
from tunesmith.progress import Progress
from tunesmith.tasks import (
    DataStats,
    EvalContext,
    FitContext,
    Phase,
    PreparedData,
    Task,
    hold_out,
    lm_epochs,
    no_trained_settings,
    task_info,
)
from tunesmith.train.loss import CrossEntropy, batch_to_device
from tunesmith.train.preference_loss import PreferenceLoss, reference_token_kl

if TYPE_CHECKING:
    from tunesmith.data.formats import Record
    from tunesmith.tasks import TrainedModel

EVAL_BATCH_PAIRS = 8  # held-out pairs scored per forward


def reference_mode(config: Config) -> str:
    """The reference the loss uses: 'none' (simpo), 'adapter_disabled', 'precomputed' or 'frozen_copy'."""
    preference = config.preference
    if preference.loss == "simpo":
        return "none"
    if preference.reference == "auto":
        return "adapter_disabled" if config.adapter.method == "lora" else "precomputed"
    if preference.reference == "adapter_disabled" and config.adapter.method != "lora":
        raise UserError(
            "config key `preference.reference`: adapter_disabled needs adapter.method: lora; use auto, "
            "precomputed or frozen_copy for full finetuning"
        )
    return preference.reference


def prepare_data(
    config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> PreparedData:
    data = config.data
    policy = ErrorPolicy(data.on_error, data.max_skipped)
    if data.train is None:
        raise UserError("config key `data.train` is missing; point it at your preference pairs file")
    reference_mode(config)  # a bad combination fails before anything loads
    pairs = load_pairs(data.train, data.format, data.fields, data.system_prompt, policy)
    if data.eval is not None:
        eval_pairs = load_pairs(
            data.eval, data.format, data.fields, data.system_prompt, policy, what="data.eval"
        )
    else:
        pairs, eval_pairs = hold_out(pairs, data.eval_fraction, data.max_eval_examples, config.train.seed)
    template = resolve_chat_template(tokenizer, data.chat_template, data.chat_template_kwargs)
    train, train_stats = tokenize_pairs(pairs, tokenizer, template, data.max_seq_len)
    evaluation, eval_stats = (
        tokenize_pairs(eval_pairs, tokenizer, template, data.max_seq_len, what="data.eval")
        if eval_pairs
        else ([], None)
    )
    pad_id = tokenizer.pad_token_id
    return PreparedData(
        # The chosen sides stand for the pairs where a task-blind reader counts or previews examples.
        train=[pair.chosen for pair in train],
        eval=[pair.chosen for pair in evaluation],
        rows=make_pair_rows(train, data.max_seq_len, data.packing),
        collate=lambda rows: collate_pairs([list(row) for row in rows], train, pad_id),
        stats=DataStats(
            train_stats, eval_stats, skipped_records=list(policy.skipped), chat_template=template.origin
        ),
        pad_id=pad_id,
        template=template,
        eval_records=eval_pairs,
        pairs=PairData(train=train, eval=evaluation, train_records=pairs),
    )


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> TrainedModel:
    model = load_causal_lm(model_path, config.model, device)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if reference_mode(config) == "precomputed":
        # The base model, before any step: its reply log-probs are the reference, cached per pair.
        # Rebuilding the model (resume, after FSDP) gives the same base, so the same values.
        pairs = _pairs(prepared)
        cache_reference_logps(model, [pairs.train, pairs.eval], prepared.pad_id, device)
    return apply_adapter(model, config.adapter, task_type="CAUSAL_LM")


def cache_reference_logps(
    model: nn.Module, splits: list[list[PairExample]], pad_id: int, device: str
) -> None:
    """Store the model's (chosen, rejected) reply log-prob sums on every pair of `splits`."""
    scorer = PreferenceLoss(model, "dpo", reference="none")
    for examples in splits:
        for start in range(0, len(examples), EVAL_BATCH_PAIRS):
            rows = [[i] for i in range(start, min(start + EVAL_BATCH_PAIRS, len(examples)))]
            chosen, rejected = _score(scorer, collate_pairs(rows, examples, pad_id), device)
            for (index,), c, r in zip(rows, chosen, rejected, strict=True):
                examples[index].reference_logps = (c, r)


@torch.no_grad()
def _score(loss: Any, batch: dict[str, Any], device: str) -> tuple[list[float], list[float]]:
    was_training = loss.training
    loss.eval()
    out = loss.policy_logps(batch_to_device(batch, device))
    loss.train(was_training)
    pairs = batch["num_pairs"]
    return out[:pairs].tolist(), out[pairs:].tolist()


def make_loss(model: nn.Module, config: Config, cross_entropy: CrossEntropy | None = None) -> nn.Module:
    preference = config.preference
    return PreferenceLoss(
        model,
        preference.loss,
        preference.beta,
        preference.label_smoothing,
        preference.simpo_gamma,
        reference_mode(config),
        cross_entropy=cross_entropy,
    )


@torch.no_grad()
def _score_pairs(
    loss: PreferenceLoss, examples: list[PairExample], pad_id: int, device: str
) -> tuple[dict[str, list[float]], float, int]:
    """Each held-out pair's log-probs, rewards and reply tokens (and reference log-probs where there
    are any), with the summed exact KL to the reference and its positions (0 where none can run)."""
    was_training = loss.training
    loss.eval()
    rows: dict[str, list[float]] = {
        k: [] for k in ("chosen", "rejected", "ref_chosen", "ref_rejected", "tokens", "rc", "rr")
    }
    kl_sum, kl_positions = 0.0, 0
    exact_kl = loss.reference in ("adapter_disabled", "frozen_copy")
    # A fully tuned model scored later (`tunesmith eval`) has no cached reference: log-probs only.
    policy_only = loss.reference == "precomputed" and any(e.reference_logps is None for e in examples)
    for start in range(0, len(examples), EVAL_BATCH_PAIRS):
        indices = [[i] for i in range(start, min(start + EVAL_BATCH_PAIRS, len(examples)))]
        batch = batch_to_device(collate_pairs(indices, examples, pad_id), device)
        pairs = batch["num_pairs"]
        if policy_only:
            sums = loss.policy_logps(batch)
            zeros = torch.zeros(pairs)
            out = {"chosen_logps": sums[:pairs], "rejected_logps": sums[pairs:], "chosen_rewards": zeros}
            out |= {"rejected_rewards": zeros, "reply_tokens": torch.zeros(2 * pairs)}
        else:
            out = loss(**{k: v for k, v in batch.items() if k != "num_targets"})
        rows["chosen"] += out["chosen_logps"].tolist()
        rows["rejected"] += out["rejected_logps"].tolist()
        rows["rc"] += out["chosen_rewards"].tolist()
        rows["rr"] += out["rejected_rewards"].tolist()
        rows["tokens"] += out["reply_tokens"].tolist()
        if exact_kl:
            total, positions = reference_token_kl(loss, batch)
            kl_sum, kl_positions = kl_sum + total, kl_positions + positions
        if "reference_logps" in out:
            rows["ref_chosen"] += out["reference_logps"][:pairs].tolist()
            rows["ref_rejected"] += out["reference_logps"][pairs:].tolist()
    loss.train(was_training)
    return rows, kl_sum, kl_positions


@torch.no_grad()
def pair_metrics(
    loss: PreferenceLoss, examples: list[PairExample], pad_id: int, device: str
) -> dict[str, Any]:
    """Held-out preference metrics and each pair's scores.

    `accuracy` is the share of pairs whose implicit reward ranks chosen above rejected; where
    there is no reference yet (the base model is its own reference: every reward is 0) it is the
    log-prob ranking, `logp_accuracy`, which is reported for every model. `kl_to_reference` is the
    exact next-token KL(pi || pi_ref) over the vocabulary, averaged over the held-out reply positions
    (chosen and rejected contexts; not on the policy's own samples), where a reference model can run
    (LoRA, frozen copy). `log_ratio_to_reference`, the mean per-token log(pi/pi_ref) of the held-out
    reply tokens, is there whenever reference log-probs are (also cached ones); it can be negative.
    """
    rows, kl_sum, kl_positions = _score_pairs(loss, examples, pad_id, device)
    exact_kl = loss.reference in ("adapter_disabled", "frozen_copy")
    policy_only = loss.reference == "precomputed" and any(e.reference_logps is None for e in examples)
    count = max(len(rows["chosen"]), 1)
    num_pairs = len(rows["chosen"])
    logp_wins = sum(c > r for c, r in zip(rows["chosen"], rows["rejected"], strict=True))
    reward_margins = [c - r for c, r in zip(rows["rc"], rows["rr"], strict=True)]
    metrics: dict[str, Any] = {
        "num_pairs": num_pairs,
        "logp_accuracy": logp_wins / count,
        "logp_margin": sum(c - r for c, r in zip(rows["chosen"], rows["rejected"], strict=True)) / count,
        "chosen_logps": sum(rows["chosen"]) / count,
        "rejected_logps": sum(rows["rejected"]) / count,
        "reward_margin": sum(reward_margins) / count,
        "reward_accuracy": sum(m > 0 for m in reward_margins) / count,
    }
    has_reference = bool(rows["ref_chosen"])
    # No reward separates the pairs yet (the policy is still the reference): rank by log-prob.
    untrained = (has_reference or policy_only) and all(abs(m) < 1e-6 for m in reward_margins)
    if has_reference:
        log_ratio = (
            sum(rows["chosen"]) + sum(rows["rejected"]) - sum(rows["ref_chosen"]) - sum(rows["ref_rejected"])
        )
        metrics["log_ratio_to_reference"] = log_ratio / max(sum(rows["tokens"]), 1.0)
    if exact_kl:
        metrics["kl_to_reference"] = kl_sum / max(kl_positions, 1)
    metrics["accuracy"] = metrics["logp_accuracy"] if untrained else metrics["reward_accuracy"]
    metrics["margin"] = metrics["logp_margin"] if untrained else metrics["reward_margin"]
    metrics["accuracy_kind"] = "log-prob ranking" if untrained else "implicit reward ranking"
    metrics["pairs"] = [
        {"source": e.source, "chosen_logp": c, "rejected_logp": r, "reward_margin": m}
        for e, c, r, m in zip(examples, rows["chosen"], rows["rejected"], reward_margins, strict=True)
    ]
    return metrics


def evaluate(ctx: EvalContext, phase: Phase = "after") -> dict[str, Any]:
    """Preference accuracy, margins, log-probs and KL on held-out pairs; generations before/after."""
    prepared, config = ctx.prepared, ctx.config
    metrics: dict[str, Any] = {}
    pairs = _pairs(prepared)
    if pairs.eval:
        metrics.update(pair_metrics(cast(PreferenceLoss, ctx.loss), pairs.eval, prepared.pad_id, ctx.device))
        if phase == "during":
            metrics.pop("pairs")
    if phase != "during":
        records = _records(prepared.eval_records)
        prompts: list[tuple[list[dict[str, str]], PreferencePair | None]] = (
            [([{"role": "user", "content": p}], None) for p in config.eval.prompts]
            if config.eval.prompts
            else [(pair.prompt, pair) for pair in records[: config.eval.num_prompts]]
        )
        generations = []
        for messages, pair in prompts:
            reply = generate_reply(
                ctx.model, ctx.tokenizer, _template(prepared), messages, config.eval.max_new_tokens
            )
            item = {"prompt": messages[-1]["content"], "output": reply}
            if pair is not None:
                # The report shows the chosen reply as the reference, the rejected one beside it.
                item["reference"] = item["chosen"] = pair.chosen[-1]["content"]
                item["rejected"] = pair.rejected[-1]["content"]
            generations.append(item)
        metrics["generations"] = generations
    return metrics


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
    """A trained (or base) causal LM, as instruct loads it; a LoRA run's is a PeftModel, so its
    reference (the adapter disabled) is there for the held-out metrics."""
    from tunesmith.tasks import instruct

    return instruct.load_for_eval(target, name, config, device, prepared)


def measure_fit(ctx: FitContext) -> dict[str, Any]:
    """select's probe: how well the base model already ranks the held-out pairs, and the mean
    log-prob per character of their chosen replies (comparable across tokenizers; higher is better)."""
    pairs = _pairs(ctx.prepared).eval[: ctx.sample]
    if not pairs:
        raise UserError("the data has too few pairs to hold a sample out; give at least 2")
    scorer = PreferenceLoss(ctx.model, "simpo")  # reference-free: the base model's own log-probs
    metrics = pair_metrics(scorer, pairs, ctx.prepared.pad_id, ctx.device)
    by_source = {str(r.source): r for r in _records(ctx.prepared.eval_records)}
    characters = sum(
        len("".join(m["content"] for m in by_source[p.source].chosen)) for p in pairs if p.source in by_source
    )
    chosen_tokens = sum(p.chosen.num_supervised for p in pairs)
    return {
        "preference_accuracy": metrics["logp_accuracy"],
        "logp_margin": metrics["logp_margin"],
        # The shared column select ranks by: the chosen replies' loss per character.
        "loss_per_char": -metrics["chosen_logps"] * len(pairs) / max(characters, 1),
        "num_tokens": chosen_tokens,
        "num_characters": characters,
        "tokens_per_char": chosen_tokens / max(characters, 1),
    }


def preview_label(prepared: PreparedData, example: Example) -> Any:
    """Previews show a pair's chosen side; its label says so."""
    return "chosen reply (rejected not shown)"


TASK = Task(
    info=task_info("preference"),
    prepare_data=prepare_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    save_final=save_final,
    load_for_eval=load_for_eval,
    measure_fit=measure_fit,
    trained_data_settings=no_trained_settings,
    recommend_epochs=lm_epochs,
    preview_label=preview_label,
)


def _pairs(prepared: PreparedData) -> PairData:
    assert prepared.pairs is not None, "preference's prepare_data sets the pairs"
    return prepared.pairs


def _records(records: Sequence[Record]) -> list[PreferencePair]:
    return cast(list[PreferencePair], records)


def _template(prepared: PreparedData) -> ChatTemplate:
    assert prepared.template is not None, "preference's prepare_data sets the chat template"
    return prepared.template
