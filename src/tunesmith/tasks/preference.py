"""Preference tuning: pairs of a better and a worse reply, DPO / IPO / SimPO on reply log-probs.

The reference model never costs a second copy of the weights unless asked: with LoRA it is the
base model with the adapter disabled; with full finetuning its log-probs are computed once, when
the model is built (before any step), and cached on every pair (`preference.reference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Config
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.preference import (
    PairExample,
    collate_pairs,
    load_pairs,
    make_pair_rows,
    tokenize_pairs,
)
from tunesmith.data.templates import resolve_chat_template
from tunesmith.errors import UserError
from tunesmith.evaluate.generation import generate_reply
from tunesmith.models.adapters import apply_adapter
from tunesmith.models.load import load_causal_lm
from tunesmith.tasks import PreparedData, hold_out
from tunesmith.train.loss import PreferenceLoss, batch_to_device, reference_token_kl

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


def prepare_data(config: Config, tokenizer: Any) -> PreparedData:
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
    template = resolve_chat_template(tokenizer, data.chat_template)
    train, train_stats = tokenize_pairs(pairs, tokenizer, template, data.max_seq_len)
    evaluation, eval_stats = (
        tokenize_pairs(eval_pairs, tokenizer, template, data.max_seq_len, what="data.eval")
        if eval_pairs
        else ([], None)
    )
    pad_id = tokenizer.pad_token_id
    return PreparedData(
        train=train,
        eval=evaluation,
        rows=make_pair_rows(train, data.max_seq_len, data.packing),
        collate=lambda rows: collate_pairs(rows, train, pad_id),
        stats={
            "train": train_stats,
            "eval": eval_stats,
            "skipped_records": list(policy.skipped),
            "chat_template": template.origin,
        },
        template=template,
        eval_records=eval_pairs,
        extra={"train_records": pairs, "pad_id": pad_id},
    )


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> Any:
    model = load_causal_lm(model_path, config.model, device)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if reference_mode(config) == "precomputed":
        # The base model, before any step: its reply log-probs are the reference, cached per pair.
        # Rebuilding the model (resume, after FSDP) gives the same base, so the same values.
        cache_reference_logps(model, [prepared.train, prepared.eval], prepared.extra["pad_id"], device)
    return apply_adapter(model, config.adapter, task_type="CAUSAL_LM")


def cache_reference_logps(model: Any, splits: list[Any], pad_id: int, device: str) -> None:
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


def make_loss(model: Any, config: Config) -> torch.nn.Module:
    preference = config.preference
    return PreferenceLoss(
        model,
        preference.loss,
        preference.beta,
        preference.label_smoothing,
        preference.simpo_gamma,
        reference_mode(config),
    )


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


def evaluate(
    model: Any,
    loss: torch.nn.Module,
    prepared: PreparedData,
    tokenizer: Any,
    config: Config,
    device: str,
    phase: str = "after",
    generate: bool = True,
) -> dict[str, Any]:
    """Preference accuracy, margins, log-probs and KL on held-out pairs; generations before/after."""
    metrics: dict[str, Any] = {}
    if prepared.eval:
        metrics.update(pair_metrics(loss, prepared.eval, prepared.extra["pad_id"], device))  # type: ignore[arg-type]
        if phase == "during":
            metrics.pop("pairs")
    if generate and phase != "during":
        generations = []
        prompts = (
            [([{"role": "user", "content": p}], None) for p in config.eval.prompts]
            if config.eval.prompts
            else [(pair.prompt, pair) for pair in prepared.eval_records[: config.eval.num_prompts]]
        )
        for messages, pair in prompts:
            reply = generate_reply(model, tokenizer, prepared.template, messages, config.eval.max_new_tokens)
            item = {"prompt": messages[-1]["content"], "output": reply}
            if pair is not None:
                # `reference` is what today's report shows beside the generations: the chosen reply.
                item["reference"] = item["chosen"] = pair.chosen[-1]["content"]
                item["rejected"] = pair.rejected[-1]["content"]
            generations.append(item)
        metrics["generations"] = generations
    return metrics


def save_final(model: Any, tokenizer: Any, out_dir: Path, prepared: PreparedData, config: Config) -> None:
    """The same directory as instruct: a PEFT adapter or a full model, tokenizer and template."""
    from tunesmith.tasks import instruct

    instruct.save_final(model, tokenizer, out_dir, prepared, config)
