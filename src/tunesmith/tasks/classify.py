"""Supervised finetuning for text classification: a head on the last real token (decoders) or
[CLS] (encoders), trained with LoRA or fully, with optional class weights.

Multi-class: one label per example, softmax. Multi-label: any number of labels per example
(a list, or one 0/1 column per label), sigmoid with a decision threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import Config
from tunesmith.data.formats import LabeledText, normalize
from tunesmith.data.labels import (
    LabelSet,
    build_label_set,
    class_weights,
    collate_inputs,
    collate_labeled,
    columns_to_label_lists,
    label_names,
    label_tensors,
    tokenize_labeled,
)
from tunesmith.data.load import ErrorPolicy, iter_rows
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.models.adapters import apply_adapter
from tunesmith.models.heads import classifier_logits, load_sequence_classifier
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
    task_info,
)
from tunesmith.train.loss import (
    ClassificationLoss,
    CrossEntropy,
    batch_to_device,
    weighted_classification_loss,
)
from tunesmith.train.rundir import MODEL_INFO_FILE, read_model_info, write_model_info

if TYPE_CHECKING:
    from tunesmith.tasks import TrainedModel

MAX_REPORTED_EXAMPLES = 200  # per-example predictions kept in eval/*.json
ZERO_SHOT_PROMPT = "Text: {text}\nLabel:"  # select's zero-shot probe of a base model


def load_labeled(spec: str | list[str], config: Config, policy: ErrorPolicy, what: str) -> list[LabeledText]:
    data = config.data
    rows = iter_rows(spec, policy, what)
    if data.label_columns:
        rows = columns_to_label_lists(rows, data.label_columns)
    # One format only, so a missing column is reported as such, with the mapping that fixes it.
    fmt = "labeled" if data.format == "auto" else data.format
    records = list(normalize(rows, "labeled", fmt, data.fields, None, policy))
    if not records:
        shown = spec if isinstance(spec, str) else ", ".join(spec)
        raise UserError(f"{what}: no usable records in {shown}; the data is empty")
    return records  # type: ignore[return-value]


def _check_settings(config: Config) -> list[str]:
    data = config.data
    if data.label_columns and not data.multi_label:
        raise UserError(
            "config key `data.label_columns` needs data.multi_label: true (one 0/1 column per label)"
        )
    warnings = []
    if not data.multi_label and data.threshold != 0.5:
        warnings.append(
            "data.threshold only applies with data.multi_label: true; multi-class takes the top label"
        )
    return warnings


def _label_warnings(label_set: LabelSet) -> list[str]:
    warnings = [
        f"label {name!r} occurs in the eval data (first at {source}) but never in data.train; "
        "the model cannot learn it and its eval examples count as errors"
        for name, source in label_set.only_in_eval.items()
    ]
    for name, count in label_set.train_counts.items():
        if count == 0 and name not in label_set.only_in_eval:
            warnings.append(f"label {name!r} (from data.labels) never occurs in data.train")
    return warnings


def prepare_data(
    config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> PreparedData:
    data = config.data
    if data.train is None:
        raise UserError("config key `data.train` is missing; point it at your labelled data (text + label)")
    warnings = _check_settings(config)
    policy = ErrorPolicy(data.on_error, data.max_skipped)
    records = load_labeled(data.train, config, policy, "data.train")
    if data.eval is not None:
        eval_records = load_labeled(data.eval, config, policy, "data.eval")
    else:
        records, eval_records = hold_out(
            records, data.eval_fraction, data.max_eval_examples, config.train.seed
        )
    label_set = build_label_set(records, eval_records, data.labels, data.multi_label)
    warnings += _label_warnings(label_set)
    train, train_stats = tokenize_labeled(records, tokenizer, label_set, data.max_seq_len)
    evaluation, eval_stats = (
        tokenize_labeled(eval_records, tokenizer, label_set, data.max_seq_len) if eval_records else ([], None)
    )
    weights = class_weights(label_set, data.class_weights, len(train))
    pad_id = tokenizer.pad_token_id
    return PreparedData(
        train=train,
        eval=evaluation,
        rows=[[i] for i in range(len(train))],
        collate=lambda rows: collate_labeled(rows, train, pad_id, weights, data.multi_label),
        stats=DataStats(
            train_stats,
            eval_stats,
            skipped_records=list(policy.skipped),
            warnings=warnings,
            labels=label_set.names,
            class_weights=weights,
        ),
        pad_id=pad_id,
        eval_records=eval_records,
        label_set=label_set,
        class_weights=weights,
        vocab_size=len(tokenizer),
    )


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> TrainedModel:
    assert prepared.label_set is not None, "classify's prepare_data sets the label set"
    model, new_modules = load_sequence_classifier(
        model_path,
        config.model,
        device,
        prepared.label_set.names,
        prepared.pad_id,
        config.data.multi_label,
        prepared.vocab_size,
    )
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # SEQ_CLS puts the head (`score` / `classifier`) in modules_to_save; so do the other
    # modules the checkpoint lacked (a BERT pooler): they train in full and are saved with the
    # adapter, so a reload predicts exactly what the trained model predicted.
    return apply_adapter(model, config.adapter, task_type="SEQ_CLS", modules_to_save=new_modules or None)


def make_loss(model: nn.Module, config: Config, cross_entropy: CrossEntropy | None = None) -> nn.Module:
    """The class-weighted loss on the head's logits (`cross_entropy`, an LM-head choice, is unused)."""
    return ClassificationLoss(model, config.data.multi_label, config.data.threshold)


@torch.no_grad()
def predict_logits(
    model: Any,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    device: str,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[len(examples), num_labels] logits in the examples' order, batched by similar length."""
    was_training = model.training
    model.eval()
    # Sorting by length keeps padding (and so wasted compute) small.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    results: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = batch_to_device(collate_inputs([examples[i] for i in chunk], pad_id), device)
        logits = classifier_logits(model, **batch).float().cpu()
        results.update(zip(chunk, logits, strict=True))
        if on_batch is not None:
            on_batch(len(chunk))
    model.train(was_training)
    return torch.stack([results[i] for i in range(len(examples))])


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def decide(probs: torch.Tensor, multi_label: bool, threshold: float) -> list[Any]:
    """Class index per row (multi-class) or a 0/1 list per row (multi-label)."""
    if multi_label:
        return (probs >= threshold).int().tolist()
    return probs.argmax(dim=-1).tolist()


def evaluate(ctx: EvalContext, phase: Phase = "after") -> dict[str, Any]:
    """Loss, accuracy, macro-F1, per-class scores and confusion matrix on the eval split,
    next to the majority-class baseline; per-example predictions (capped) except during training."""
    from tunesmith.evaluate.metrics import classification_metrics, majority_baseline, multilabel_metrics

    prepared, config = ctx.prepared, ctx.config
    if not prepared.eval:
        return {}
    data = config.data
    label_set = prepared.label_set
    assert label_set is not None and prepared.class_weights is not None
    names = label_set.names
    logits = predict_logits(
        ctx.model, prepared.eval, ctx.tokenizer.pad_token_id, config.train.batch_size, ctx.device
    )
    labels, weights = label_tensors(prepared.eval, prepared.class_weights, data.multi_label)
    sums = weighted_classification_loss(logits, labels, weights, data.multi_label, data.threshold)
    probs = probabilities(logits, data.multi_label)
    predicted = decide(probs, data.multi_label, data.threshold)
    gold: list[Any] = [e.label if not data.multi_label else [int(v) for v in e.label] for e in prepared.eval]
    scores = (multilabel_metrics if data.multi_label else classification_metrics)(gold, predicted, names)
    metrics: dict[str, Any] = {
        "loss": float(sums["loss_sum"] / sums["num_targets"].clamp(min=1e-12)),
        **scores,
        "majority_baseline": majority_baseline(
            [e.label for e in prepared.train], gold, names, data.multi_label
        ),
        "labels": names,
        "num_examples": len(gold),
    }
    if label_set.only_in_eval:
        metrics["labels_not_in_train"] = sorted(label_set.only_in_eval)
    if phase != "during":
        metrics["examples"] = _example_rows(
            cast(list[LabeledText], prepared.eval_records), gold, predicted, probs, names, data.multi_label
        )
    return metrics


def _example_rows(
    records: Sequence[LabeledText],
    gold: list[Any],
    predicted: list[Any],
    probs: torch.Tensor,
    names: list[str],
    multi_label: bool,
) -> list[dict[str, Any]]:
    rows = []
    for index in range(min(len(gold), MAX_REPORTED_EXAMPLES)):
        record = records[index]
        text = record.text if record.text_pair is None else f"{record.text} || {record.text_pair}"
        if multi_label:
            label = [n for n, on in zip(names, gold[index], strict=True) if on]
            guess = [n for n, on in zip(names, predicted[index], strict=True) if on]
            confidence: float | list[float] = [round(float(p), 4) for p in probs[index]]
        else:
            label, guess = names[gold[index]], names[predicted[index]]
            confidence = round(float(probs[index, predicted[index]]), 4)
        rows.append(
            {
                "text": text,
                "label": label,
                "predicted": guess,
                "correct": label == guess,
                "probability": confidence,
                "source": str(record.source),
            }
        )
    return rows


def save_final(
    model: TrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    prepared: PreparedData,
    config: Config,
) -> None:
    """A PEFT adapter directory with the head (LoRA) or a full model directory, the tokenizer,
    and the labels (label order, multi-label, threshold, column mapping) for `tunesmith predict`."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    data = config.data
    info = {
        "labels": prepared.stats.labels,
        "multi_label": data.multi_label,
        "threshold": data.threshold,
        "fields": data.fields,
        "label_columns": data.label_columns,
        "max_seq_len": data.max_seq_len,
        "pad_token_id": prepared.pad_id,
    }
    write_model_info(out_dir, info)  # final/tunesmith.json, with the run's task and base model


def load_for_eval(target: Path, name: str, config: Config, device: str, prepared: PreparedData) -> nn.Module:
    """A trained classifier with its head; a base model gets a fresh, seeded head (training's "before")."""
    if "labels" in read_model_info(target):
        model: nn.Module = load_classifier(target, device)[0]
        return model
    from tunesmith.models.load import resolve_model_path

    torch.manual_seed(config.train.seed)
    return build_model(resolve_model_path(name), config, device, prepared)


def trained_data_settings(target: Path) -> dict[str, Any]:
    """The data settings a trained classifier fixes for evaluation: its label order."""
    labels = read_model_info(target).get("labels")
    return {"labels": labels} if labels else {}


def preview_label(prepared: PreparedData, example: Example) -> Any:
    """Label names, not head indices."""
    if prepared.label_set is None or example.label is None:
        return example.label
    names = prepared.label_set.names
    if isinstance(example.label, list):
        return (
            [n for n, on in zip(names, example.label, strict=True) if on] if example.label else example.label
        )
    return names[example.label]


def measure_fit(ctx: FitContext) -> dict[str, Any]:
    """select's probe: zero-shot label likelihoods of the base model on the held-out sample."""
    records = [r for r in ctx.prepared.eval_records if isinstance(r, LabeledText)][: ctx.sample]
    return zero_shot_labels(
        ctx.model, ctx.tokenizer, records, list(ctx.prepared.stats.labels or []), ctx.device
    )


def zero_shot_labels(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[LabeledText],
    names: list[str],
    device: str,
) -> dict[str, Any]:
    """Score each label name as the continuation of a prompt; the label likelihoods normalised
    over the label set give a zero-shot classifier: its accuracy and cross-entropy on the gold label."""
    label_ids = [tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in names]
    correct, cross_entropy, characters, prompt_tokens = 0, 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for record in records:
            prompt = tokenizer(ZERO_SHOT_PROMPT.format(text=record.text), add_special_tokens=False)[
                "input_ids"
            ][-448:]
            characters += len(record.text)
            prompt_tokens += len(tokenizer(record.text, add_special_tokens=False)["input_ids"])
            scores = []
            for ids in label_ids:
                inputs = torch.tensor([prompt + ids], device=device)
                logits = model(input_ids=inputs, use_cache=False).logits[0, len(prompt) - 1 : -1].float()
                scores.append(
                    float(
                        torch.log_softmax(logits, -1)
                        .gather(1, torch.tensor(ids, device=device)[:, None])
                        .sum()
                    )
                )
            log_probs = torch.log_softmax(torch.tensor(scores), 0)
            gold = names.index(record.label if isinstance(record.label, str) else str(record.label))
            correct += int(int(log_probs.argmax()) == gold)
            cross_entropy -= float(log_probs[gold])
    count = max(1, len(records))
    return {
        "zero_shot_accuracy": correct / count,
        "label_loss": cross_entropy / count,
        "loss_per_char": cross_entropy / count,  # ranked on: lower is better
        "tokens_per_char": prompt_tokens / max(1, characters),
        "num_examples": len(records),
    }


TASK = Task(
    info=task_info("classify"),
    prepare_data=prepare_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    save_final=save_final,
    load_for_eval=load_for_eval,
    measure_fit=measure_fit,
    trained_data_settings=trained_data_settings,
    recommend_epochs=lm_epochs,
    preview_label=preview_label,
)


# --------------------------------------------------------------------------------------------
# Using a trained classifier


def load_classifier(final_dir: Path, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, the labels' metadata) of a trained classifier directory (adapter or full model)."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_tokenizer, resolve_model_path

    info = read_model_info(final_dir)  # also reads labels.json of runs by earlier versions
    if "labels" not in info:
        raise UserError(
            f"{final_dir}: no classifier labels in {MODEL_INFO_FILE}; `tunesmith predict` needs a run "
            "trained with task: classify"
        )
    tokenizer = load_tokenizer(str(final_dir), ModelConfig(name=str(final_dir)))
    adapter_config = final_dir / "adapter_config.json"
    base = (
        json.loads(adapter_config.read_text())["base_model_name_or_path"]
        if adapter_config.is_file()
        else None
    )
    path = resolve_model_path(base) if base else str(final_dir)
    model, _ = load_sequence_classifier(
        path,
        ModelConfig(name=path),
        device,
        info["labels"],
        info["pad_token_id"],
        info["multi_label"],
        len(tokenizer),
    )
    if base:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(final_dir))
        except Exception as exc:
            from tunesmith.models.load import unsafe_pickle_error

            # Never PyTorch's own advice (re-run with weights_only=False): that would run the pickle.
            raise unsafe_pickle_error(final_dir, exc) or UserError(
                f"{final_dir}: not a loadable PEFT adapter ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None
    model.eval()
    return model, tokenizer, info


def read_unlabeled(spec: str, info: dict[str, Any]) -> tuple[list[LabeledText], bool]:
    """Rows to predict: text (+ text_pair), with the training run's column mapping; labels optional."""
    from tunesmith.data.formats import apply_field_mapping

    records, has_labels = [], True
    for row, source in iter_rows(spec, ErrorPolicy(), "--data"):
        row = apply_field_mapping(row, info.get("fields") or {})
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            found = sorted(row)
            raise UserError(
                f"{source}: no text in field `text` (found {found}); the run maps columns with "
                f"data.fields {info.get('fields') or {}}"
            )
        pair = (
            row.get("text_pair") if isinstance(row.get("text_pair"), str) and row.get("text_pair") else None
        )
        label = row.get("label")
        if info.get("label_columns") and all(c in row for c in info["label_columns"]):
            label = [c for c in info["label_columns"] if str(row[c]).strip().lower() in ("1", "true", "yes")]
        has_labels = has_labels and label not in (None, "")
        records.append(LabeledText(text, label, pair, source))
    if not records:
        raise UserError(f"--data: no rows in {spec}")
    return records, has_labels


def predict_rows(
    model: Any,
    tokenizer: Any,
    info: dict[str, Any],
    records: list[LabeledText],
    batch_size: int,
    device: str,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One output row per record: text, predicted label(s), one probability per label (+ gold label)."""
    from tunesmith.data.labels import encode_text

    names = info["labels"]
    examples = []
    for record in records:
        encoded = encode_text(tokenizer, record.text, record.text_pair, info["max_seq_len"])
        examples.append(Example(encoded["input_ids"], token_type_ids=encoded.get("token_type_ids")))
    logits = predict_logits(model, examples, tokenizer.pad_token_id, batch_size, device, on_batch)
    probs = probabilities(logits, info["multi_label"])
    decisions = decide(probs, info["multi_label"], info["threshold"])
    rows = []
    for record, decision, row_probs in zip(records, decisions, probs, strict=True):
        row: dict[str, Any] = {"text": record.text}
        if record.text_pair is not None:
            row["text_pair"] = record.text_pair
        if record.label is not None:
            given = set(label_names(record))
            # Multi-label gold labels in head order, so they compare equal to `predicted`.
            row["label"] = ";".join([n for n in names if n in given] if info["multi_label"] else given)
        if info["multi_label"]:
            row["predicted"] = ";".join(n for n, on in zip(names, decision, strict=True) if on)
        else:
            row["predicted"] = names[decision]
        row.update({f"prob_{name}": round(float(p), 6) for name, p in zip(names, row_probs, strict=True)})
        rows.append(row)
    return rows
