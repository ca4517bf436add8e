"""Labels for classification: the label set and its order, encoding, class weights, tokenizing.

Labels are kept as strings ("0", "positive"); the order of the label set is the order of the
classification head's outputs and is saved with the model (id2label). Integer labels sort
numerically, so "2" comes before "10".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.data.formats import LabeledText
from tunesmith.data.load import ErrorPolicy, Source
from tunesmith.data.tokenize import Example, check_record_size
from tunesmith.errors import UserError

TRUE_STRINGS = {"1", "true", "yes", "y", "t"}
FALSE_STRINGS = {"0", "false", "no", "n", "f", ""}
NO_LABEL = "__none__"  # a multi-label row with every label column 0


def label_names(record: LabeledText) -> list[str]:
    """The record's label(s) as strings: one for multi-class, any number for multi-label."""
    values = record.label if isinstance(record.label, list) else [record.label]
    return [_label_string(v) for v in values]


def _label_string(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def columns_to_label_lists(
    rows: Iterable[tuple[dict[str, Any], Source]], columns: list[str]
) -> Iterator[tuple[dict[str, Any], Source]]:
    """Multi-label data with one 0/1 column per label -> rows with `label` = the list of set columns."""
    for row, source in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(
                f"{source}: label column `{missing[0]}` (from data.label_columns) is missing; found {sorted(row)}"
            )
        labels = []
        for column in columns:
            value = row[column]
            text = _label_string(value).lower() if value is not None else ""
            if text in TRUE_STRINGS:
                labels.append(column)
            elif text not in FALSE_STRINGS:
                raise UserError(f"{source}: label column `{column}` holds {value!r}; use 0/1 (or true/false)")
        yield {**row, "label": labels or [NO_LABEL]}, source


@dataclass
class LabelSet:
    """The classes in head order, plus what was found while building it (for warnings and the report)."""

    names: list[str]
    multi_label: bool = False
    train_counts: dict[str, int] = field(default_factory=dict)
    only_in_eval: dict[str, str] = field(default_factory=dict)  # label -> first file:line in eval

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def encode(self, record: LabeledText) -> int | list[float]:
        index = self.index
        names = [n for n in label_names(record) if n != NO_LABEL]
        for name in names:
            if name not in index:
                raise UserError(
                    f"{record.source}: label {name!r} is not one of data.labels ({', '.join(self.names)}); "
                    "add it to data.labels or fix the record"
                )
        if not self.multi_label:
            if len(names) != 1:
                raise UserError(
                    f"{record.source}: {len(names)} labels {names} on one example; set data.multi_label: true "
                    "for multi-label data"
                )
            return index[names[0]]
        hot = [0.0] * len(self.names)
        for name in names:
            hot[index[name]] = 1.0
        return hot


def build_label_set(
    train: Sequence[LabeledText],
    evaluation: Sequence[LabeledText],
    configured: list[str] | None,
    multi_label: bool,
) -> LabelSet:
    """The label set: data.labels in its order, else every label in train and eval, sorted.

    A label seen only in eval still gets a head output (never trained, so never predicted) and
    is reported, so the metrics show the examples the model could not get right.
    """
    train_counts = Counter(n for r in train for n in label_names(r) if n != NO_LABEL)
    first_in_eval: dict[str, str] = {}
    for record in evaluation:
        for name in label_names(record):
            if name != NO_LABEL:
                first_in_eval.setdefault(name, str(record.source))
    if configured:
        if len(set(configured)) != len(configured):
            raise UserError(f"config key `data.labels` lists a label twice: {configured}")
        names = [str(n) for n in configured]
    else:
        names = sorted(set(train_counts) | set(first_in_eval), key=_sort_key)
    only_in_eval = {n: s for n, s in first_in_eval.items() if n not in train_counts}
    label_set = LabelSet(names, multi_label, {n: train_counts.get(n, 0) for n in names}, only_in_eval)
    present = [n for n in names if train_counts.get(n, 0) > 0]
    if not multi_label and len(present) < 2:
        files = sorted({r.source.path for r in train})
        only = f"label {present[0]!r}" if present else "no label"
        raise UserError(
            f"{', '.join(files)}: every training example has {only} (e.g. {train[0].source}); "
            "a classifier needs at least two classes in data.train"
        )
    return label_set


def class_weights(label_set: LabelSet, setting: str | dict[str, float], num_examples: int) -> list[float]:
    """One weight per label (data.class_weights: none, balanced, or {label: weight}).

    Multi-class: the weight of an example's class, scaled so the mean weight over the training
    examples is 1. The loss is sum(w * l) / sum(w), so the scale never moves the optimum; it
    keeps the logged loss and accuracy on their usual scale. Multi-label: the weight of a
    positive entry (negatives weigh 1), like BCE's pos_weight; 'balanced' is negatives/positives.
    """
    names, counts = label_set.names, label_set.train_counts
    if setting == "none":
        return [1.0] * len(names)
    if setting == "balanced":
        if label_set.multi_label:
            return [((num_examples - counts[n]) / counts[n]) if counts[n] else 1.0 for n in names]
        present = [n for n in names if counts[n]]
        weights = [num_examples / (len(present) * counts[n]) if counts[n] else 1.0 for n in names]
    else:
        assert not isinstance(setting, str), "the config schema allows 'none', 'balanced' or a mapping"
        unknown = [k for k in setting if str(k) not in names]
        if unknown:
            raise UserError(
                f"config key `data.class_weights`: unknown label {unknown[0]!r}; labels are {', '.join(names)}"
            )
        bad = [k for k, v in setting.items() if not v > 0]
        if bad:
            raise UserError(f"config key `data.class_weights.{bad[0]}`: weights must be > 0")
        explicit = {str(k): float(v) for k, v in setting.items()}
        weights = [explicit.get(n, 1.0) for n in names]
    if label_set.multi_label:
        return weights
    mean = sum(weights[i] * counts[n] for i, n in enumerate(names)) / max(num_examples, 1)
    return [w / mean for w in weights]


@dataclass
class ClassifyStats:
    num_records: int = 0
    num_examples: int = 0
    num_tokens: int = 0
    num_truncated: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.label_counts.items())
        parts = [f"{self.num_examples} examples", f"{self.num_tokens:,} tokens", f"labels: {counts}"]
        if self.num_truncated:
            parts.append(f"{self.num_truncated} truncated")
        return ", ".join(parts)


def encode_text(tokenizer: Any, text: str, text_pair: str | None, max_seq_len: int) -> dict[str, list[int]]:
    """Token ids (and token types, for encoders that use them) of a text or a text pair.

    Encoder tokenizers have a pair template ([CLS] a [SEP] b [SEP]) and segment ids; decoder
    tokenizers usually just concatenate, so the two texts are joined by a newline instead.
    """
    if text_pair is not None:
        encoded = tokenizer(text, text_pair, truncation="longest_first", max_length=max_seq_len)
        if "token_type_ids" in encoded and any(encoded["token_type_ids"]):
            return {
                "input_ids": list(encoded["input_ids"]),
                "token_type_ids": list(encoded["token_type_ids"]),
            }
        text = f"{text}\n{text_pair}"
    encoded = tokenizer(text, truncation=True, max_length=max_seq_len)
    return {"input_ids": list(encoded["input_ids"])}


def tokenize_labeled(
    records: Sequence[LabeledText],
    tokenizer: Any,
    label_set: LabelSet,
    max_seq_len: int,
    policy: ErrorPolicy | None = None,
) -> tuple[list[Example], ClassifyStats]:
    """`policy` (data.on_error) decides whether an oversized record stops the run or is skipped."""
    stats = ClassifyStats(num_records=len(records))
    examples = []
    counts: Counter[str] = Counter()
    for record in records:
        num_chars = len(record.text) + len(record.text_pair or "")
        if not check_record_size(record.source, num_chars, max_seq_len, policy):
            continue
        encoded = encode_text(tokenizer, record.text, record.text_pair, max_seq_len)
        # A text that fills max_seq_len exactly is counted too: cheaper than encoding twice.
        if len(encoded["input_ids"]) >= max_seq_len:
            stats.num_truncated += 1
        example = Example(
            encoded["input_ids"],
            None,
            label_set.encode(record),
            str(record.source),
            encoded.get("token_type_ids"),
        )
        examples.append(example)
        stats.num_tokens += len(example.input_ids)
        counts.update(n for n in label_names(record) if n != NO_LABEL)
    stats.num_examples = len(examples)
    stats.label_counts = {n: counts.get(n, 0) for n in label_set.names}
    return examples, stats


def collate_inputs(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (+ token_type_ids), right-padded to the longest example."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    with_types = any(e.token_type_ids is not None for e in examples)
    token_type_ids = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention_mask[row, :n] = 1
        if example.token_type_ids is not None:
            token_type_ids[row, :n] = torch.tensor(example.token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_types:
        batch["token_type_ids"] = token_type_ids
    return batch


def collate_labeled(
    rows: Sequence[Sequence[int]],
    examples: Sequence[Example],
    pad_id: int,
    weights: Sequence[float],
    multi_label: bool,
) -> dict[str, Any]:
    """A classification batch: inputs, labels, per-target weights and their sum (num_targets).

    The loop divides the step's summed weighted loss by the step's summed weights, so class
    weights and gradient accumulation combine exactly: sum(w_i * l_i) / sum(w_i) over the step.
    """
    chosen = [examples[i] for row in rows for i in row]
    batch: dict[str, Any] = collate_inputs(chosen, pad_id)
    labels, target_weights = label_tensors(chosen, weights, multi_label)
    batch.update(labels=labels, weights=target_weights, num_targets=float(target_weights.sum()))
    return batch


def label_tensors(
    examples: Sequence[Example], weights: Sequence[float], multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ([N] class indices, or [N, labels] multi-hot) and the weight of each target."""
    class_weight = torch.tensor(weights, dtype=torch.float32)
    if multi_label:
        labels = torch.tensor([e.label for e in examples], dtype=torch.float32)
        # Positive entries weigh their label's weight, negative entries 1 (BCE pos_weight).
        return labels, torch.where(labels > 0.5, class_weight, torch.ones_like(labels))
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return labels, class_weight[labels]
