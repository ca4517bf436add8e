"""Supervised finetuning for text classification: a head on the last real token (decoders) or
[CLS] (encoders), trained with LoRA or fully, with optional class weights.

Multi-class: one label per example, softmax. Multi-label: any number of labels per example
(a list, or one 0/1 column per label), sigmoid with a decision threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

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
from tunesmith.tasks import PreparedData, hold_out
from tunesmith.train.loss import ClassificationLoss, batch_to_device, weighted_classification_loss

LABELS_FILE = "labels.json"  # in final/: label order, multi-label and threshold, for predict
MAX_REPORTED_EXAMPLES = 200  # per-example predictions kept in eval/*.json


def load_labeled(spec: str | list[str], config: Config, policy: ErrorPolicy, what: str) -> list[LabeledText]:
    data = config.data
    rows = iter_rows(spec, policy, what)
    if data.label_columns:
        rows = columns_to_label_lists(rows, data.label_columns)
    # One format only, so a missing column is reported as such, with the mapping that fixes it.
    fmt = "labeled" if data.format == "auto" else data.format
    records = list(normalize(rows, "classify", fmt, data.fields, None, policy))
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


def prepare_data(config: Config, tokenizer: Any) -> PreparedData:
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
        stats={
            "train": train_stats,
            "eval": eval_stats,
            "skipped_records": list(policy.skipped),
            "labels": label_set.names,
            "class_weights": weights,
            "warnings": warnings,
        },
        eval_records=eval_records,
        extra={
            "label_set": label_set,
            "class_weights": weights,
            "pad_token_id": pad_id,
            "vocab_size": len(tokenizer),
        },
    )


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> Any:
    extra = prepared.extra
    model, new_modules = load_sequence_classifier(
        model_path,
        config.model,
        device,
        extra["label_set"].names,
        extra["pad_token_id"],
        config.data.multi_label,
        extra["vocab_size"],
    )
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # SEQ_CLS puts the head (`score` / `classifier`) in modules_to_save; so do the other
    # modules the checkpoint lacked (a BERT pooler): they train in full and are saved with the
    # adapter, so a reload predicts exactly what the trained model predicted.
    return apply_adapter(model, config.adapter, task_type="SEQ_CLS", modules_to_save=new_modules or None)


def make_loss(model: Any, config: Config) -> torch.nn.Module:
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
    """Loss, accuracy, macro-F1, per-class scores and confusion matrix on the eval split,
    next to the majority-class baseline; per-example predictions (capped) except during training."""
    from tunesmith.evaluate.metrics import classification_metrics, majority_baseline, multilabel_metrics

    if not prepared.eval:
        return {}
    data = config.data
    label_set: LabelSet = prepared.extra["label_set"]
    names = label_set.names
    logits = predict_logits(model, prepared.eval, tokenizer.pad_token_id, config.train.batch_size, device)
    labels, weights = label_tensors(prepared.eval, prepared.extra["class_weights"], data.multi_label)
    sums = weighted_classification_loss(logits, labels, weights, data.multi_label, data.threshold)
    probs = probabilities(logits, data.multi_label)
    predicted = decide(probs, data.multi_label, data.threshold)
    gold = [e.label if not data.multi_label else [int(v) for v in e.label] for e in prepared.eval]
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
            prepared.eval_records, gold, predicted, probs, names, data.multi_label
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
            confidence = [round(float(p), 4) for p in probs[index]]
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


def save_final(model: Any, tokenizer: Any, out_dir: Path, prepared: PreparedData, config: Config) -> None:
    """A PEFT adapter directory with the head (LoRA) or a full model directory, the tokenizer,
    and labels.json (label order, multi-label, threshold, column mapping) for `tunesmith predict`."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    data = config.data
    info = {
        "labels": prepared.extra["label_set"].names,
        "multi_label": data.multi_label,
        "threshold": data.threshold,
        "fields": data.fields,
        "label_columns": data.label_columns,
        "max_seq_len": data.max_seq_len,
        "pad_token_id": prepared.extra["pad_token_id"],
    }
    (out_dir / LABELS_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Using a trained classifier


def load_classifier(final_dir: Path, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, labels.json) of a trained classifier directory (adapter or full model)."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_tokenizer, resolve_model_path

    labels_file = final_dir / LABELS_FILE
    if not labels_file.is_file():
        raise UserError(
            f"{final_dir}: no {LABELS_FILE}; `tunesmith predict` needs a run trained with task: classify"
        )
    info = json.loads(labels_file.read_text(encoding="utf-8"))
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
            raise UserError(
                f"{final_dir}: not a loadable PEFT adapter ({type(exc).__name__}: {exc})"
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
    examples = [Example(**encode_text(tokenizer, r.text, r.text_pair, info["max_seq_len"])) for r in records]
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
