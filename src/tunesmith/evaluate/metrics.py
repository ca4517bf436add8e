"""Metrics for language-model tasks: held-out loss, token accuracy, perplexity."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tunesmith.data.pack import collate_rows, make_rows
from tunesmith.data.tokenize import Example
from tunesmith.train.loss import batch_to_device


@torch.no_grad()
def batch_metrics(
    loss_module: torch.nn.Module, batches: Iterable[dict[str, Any]], device: str = "cpu"
) -> dict[str, float]:
    """Mean loss over every target token of `batches`, token accuracy and perplexity."""
    was_training = loss_module.training
    loss_module.eval()
    loss_sum, targets, correct = 0.0, 0, 0
    for batch in batches:
        batch = batch_to_device(batch, device)
        out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
        loss_sum += float(out["loss_sum"])
        targets += int(out["num_targets"])
        correct += int(out["num_correct"])
    loss_module.train(was_training)
    loss = loss_sum / max(targets, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(targets, 1),
        "num_tokens": targets,
    }


def lm_metrics(
    loss_module: torch.nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    max_seq_len: int,
    batch_size: int = 8,
    device: str = "cpu",
    packing: bool = True,
) -> dict[str, float]:
    """batch_metrics over tokenized examples, packed into rows as in training."""
    rows = make_rows(examples, max_seq_len, packing)
    batches = (
        collate_rows(rows[i : i + batch_size], examples, pad_id) for i in range(0, len(rows), batch_size)
    )
    return batch_metrics(loss_module, batches, device)


def per_example_losses(
    loss_module: torch.nn.Module, examples: Sequence[Example], pad_id: int, device: str = "cpu"
) -> list[float]:
    """Mean loss of each example alone (for fixed/broken comparisons)."""
    losses: list[float] = []
    was_training = loss_module.training
    loss_module.eval()
    with torch.no_grad():
        for index in range(len(examples)):
            batch = batch_to_device(collate_rows([[index]], examples, pad_id), device)
            out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
            losses.append(float(out["loss_sum"]) / max(int(out["num_targets"]), 1))
    loss_module.train(was_training)
    return losses


def summarize_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """after - before for every numeric metric both have."""
    return {
        key: after[key] - before[key]
        for key in before
        if key in after and isinstance(before[key], (int, float)) and isinstance(after[key], (int, float))
    }


# --------------------------------------------------------------------------------------------
# Generation metrics: a generated answer against its reference


def normalize_answer(text: str) -> str:
    """Case, surrounding whitespace and runs of whitespace do not count as a difference."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer equals the reference after normalize_answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), as the rouge-score package gives it."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        from tunesmith.errors import UserError

        raise UserError("ROUGE-L needs the metrics extra: pip install 'tunesmith[metrics]'") from None
    # rouge-score's tokenizer keeps only [a-z0-9]; text in other scripts would score 0 on
    # every pair, so it falls back to whitespace words, compared with the same LCS formula.
    if normalize_answer(reference) and not any(c.isascii() and c.isalnum() for c in reference):
        return _lcs_f_measure(normalize_answer(prediction).split(), normalize_answer(reference).split())
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def _lcs_f_measure(prediction: list[str], reference: list[str]) -> float:
    if not prediction or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for word in prediction:
        current = [0]
        for j, other in enumerate(reference):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(generations: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean exact match and ROUGE-L over the generations that have a reference (sets them per item too)."""
    scored = [g for g in generations if isinstance(g.get("reference"), str)]
    for item in scored:
        item["exact_match"] = exact_match(item["output"], item["reference"])
        item["rouge_l"] = rouge_l(item["output"], item["reference"])
    if not scored:
        return {}
    return {
        "exact_match": sum(g["exact_match"] for g in scored) / len(scored),
        "rouge_l": sum(g["rouge_l"] for g in scored) / len(scored),
    }


# --------------------------------------------------------------------------------------------
# Classification metrics (scikit-learn): labels are class indices into `names`


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Macro-F1 averages over the classes that occur in the gold labels or the predictions, so a
    class that is absent from both does not count as a zero.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    indices = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": _per_class(names, precision, recall, f1, support),
        "confusion_matrix": {
            "labels": list(names),
            "matrix": confusion_matrix(
                y_true, y_pred, labels=indices
            ).tolist(),  # rows: true, columns: predicted
        },
    }


def _per_class(names: Sequence[str], precision: Any, recall: Any, f1: Any, support: Any) -> dict[str, Any]:
    """{label: {precision, recall, f1, support}} from scikit-learn's per-class arrays."""
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }


def multilabel_metrics(
    y_true: Sequence[Sequence[int]], y_pred: Sequence[Sequence[int]], names: Sequence[str]
) -> dict[str, Any]:
    """Exact-match accuracy, macro-F1 over labels, per-label P/R/F1 and a 2x2 matrix per label."""
    import numpy as np
    from sklearn.metrics import accuracy_score, multilabel_confusion_matrix, precision_recall_fscore_support

    true, pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, zero_division=0)
    used = [i for i in range(len(names)) if true[:, i].any() or pred[:, i].any()]
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(np.mean([f1[i] for i in used])) if used else 0.0,
        "per_class": _per_class(names, precision, recall, f1, support),
        # Per label: [[true negatives, false positives], [false negatives, true positives]].
        "label_confusion": {
            "labels": list(names),
            "matrices": multilabel_confusion_matrix(true, pred).tolist(),
        },
    }


def majority_baseline(
    train_labels: Sequence[Any], eval_labels: Sequence[Any], names: Sequence[str], multi_label: bool = False
) -> dict[str, Any]:
    """The scores of always predicting the training set's most frequent class (per label when multi-label)."""
    if multi_label:
        num_train = max(len(train_labels), 1)
        constant = [int(sum(row[i] for row in train_labels) * 2 > num_train) for i in range(len(names))]
        scores = multilabel_metrics(eval_labels, [constant] * len(eval_labels), names)
        return {
            "labels": [n for n, on in zip(names, constant, strict=True) if on],
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
        }
    counts = [0] * len(names)
    for label in train_labels:
        counts[label] += 1
    majority = max(range(len(names)), key=lambda i: (counts[i], -i))
    scores = classification_metrics(eval_labels, [majority] * len(eval_labels), names)
    return {"label": names[majority], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
