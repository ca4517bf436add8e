"""Classification metrics on hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from tunesmith.evaluate.metrics import classification_metrics, majority_baseline, multilabel_metrics


def test_multiclass_metrics_match_hand_computed_values():
    # true: a a b b c ; predicted: a b b b a
    metrics = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    a, b, c = (metrics["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # Rows are the true class, columns the predicted one.
    assert metrics["confusion_matrix"] == {
        "labels": ["a", "b", "c"],
        "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 0]],
    }


def test_macro_f1_ignores_a_class_absent_from_gold_and_predictions():
    metrics = classification_metrics([0, 1], [0, 1], ["a", "b", "c"])
    assert metrics["macro_f1"] == 1.0
    assert metrics["per_class"]["c"]["support"] == 0
    assert metrics["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_multilabel_metrics_match_hand_computed_values():
    metrics = multilabel_metrics([[1, 0], [1, 1], [0, 1]], [[1, 0], [1, 0], [0, 1]], ["x", "y"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # exact match: rows 0 and 2
    y = metrics["per_class"]["y"]
    assert (y["precision"], y["recall"], y["f1"], y["support"]) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert metrics["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    # label y: [[tn, fp], [fn, tp]]
    assert metrics["label_confusion"]["matrices"][1] == [[1, 0], [1, 1]]


def test_majority_baseline_predicts_the_most_frequent_training_class():
    baseline = majority_baseline([0, 0, 1], [0, 1, 1, 1], ["a", "b"])
    assert baseline["label"] == "a"
    assert baseline["accuracy"] == pytest.approx(0.25)
    # a: precision 1/4, recall 1 -> F1 0.4; b: never predicted -> 0.
    assert baseline["macro_f1"] == pytest.approx(0.2)


def test_multilabel_majority_baseline_turns_on_labels_most_examples_have():
    baseline = majority_baseline([[1, 0], [1, 1], [1, 0]], [[1, 0], [0, 1]], ["x", "y"], multi_label=True)
    assert baseline["labels"] == ["x"]
    assert baseline["accuracy"] == pytest.approx(0.5)
