"""Generation metrics and the before/after comparison, on hand-made inputs with known answers."""

from __future__ import annotations

import pytest

from tunesmith.evaluate.compare import compare, direction, fixed_and_broken, metric_deltas, paired_generations
from tunesmith.evaluate.metrics import _lcs_f_measure, exact_match, generation_metrics, rouge_l


def test_exact_match_ignores_case_and_spacing_only():
    assert exact_match("  Paris ", "paris") == 1.0
    assert exact_match("New   York\n", "new york") == 1.0
    assert exact_match("Paris.", "Paris") == 0.0
    assert exact_match("", "x") == 0.0


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dog", "the cat sat") == 0.0
    # LCS "the cat the mat" = 4 of 6 prediction words, 4 of 6 reference words: F = 4/6.
    assert rouge_l("the cat was on the mat", "the cat sat in the mat") == pytest.approx(4 / 6)
    # prediction 2 words, reference 4, LCS 2: P = 1, R = 0.5, F = 2/3.
    assert rouge_l("red blue", "red green blue yellow") == pytest.approx(2 / 3)


def test_rouge_l_on_text_without_latin_letters_uses_words():
    # rouge-score would drop every character here; whitespace words still compare.
    assert rouge_l("猫 が 好き", "猫 が 好き") == pytest.approx(1.0)
    assert rouge_l("猫 が", "猫 が 好き です") == pytest.approx(2 / 3)
    assert _lcs_f_measure([], ["a"]) == 0.0


def test_generation_metrics_scores_items_with_references():
    generations = [
        {"prompt": "a", "output": "yes", "reference": "yes"},
        {"prompt": "b", "output": "no way", "reference": "yes way"},
        {"prompt": "c", "output": "free text"},  # a config prompt: no reference, not scored
    ]
    metrics = generation_metrics(generations)
    assert metrics["exact_match"] == pytest.approx(0.5)
    assert metrics["rouge_l"] == pytest.approx((1.0 + 0.5) / 2)
    assert generations[1]["rouge_l"] == pytest.approx(0.5)
    assert "rouge_l" not in generations[2]
    assert generation_metrics([{"prompt": "c", "output": "x"}]) == {}


def test_direction_of_metrics():
    assert direction("loss") == "lower"
    assert direction("general.perplexity") == "lower"
    assert direction("eval_loss") == "lower"
    assert direction("accuracy") == "higher"
    assert direction("rouge_l") == "higher"
    assert direction("num_tokens") == "neutral"
    assert direction("majority_baseline.accuracy") == "neutral"


def test_metric_deltas_verdicts_and_nested_metrics():
    before = {
        "loss": 2.0,
        "accuracy": 0.5,
        "num_tokens": 10,
        "general": {"perplexity": 10.0, "source": "x"},
        "generations": [{"output": "a"}],
    }
    after = {
        "loss": 1.5,
        "accuracy": 0.4,
        "num_tokens": 10,
        "general": {"perplexity": 12.0, "source": "x"},
        "rouge_l": 0.3,
    }
    rows = {r["metric"]: r for r in metric_deltas(before, after)}
    assert set(rows) == {"loss", "accuracy", "num_tokens", "general.perplexity", "rouge_l"}
    assert rows["loss"]["delta"] == pytest.approx(-0.5) and rows["loss"]["verdict"] == "better"
    assert rows["loss"]["relative"] == pytest.approx(-0.25)
    assert rows["accuracy"]["verdict"] == "worse"
    assert rows["general.perplexity"]["verdict"] == "worse"
    assert rows["num_tokens"]["verdict"] == ""
    assert rows["rouge_l"]["before"] is None and rows["rouge_l"]["delta"] is None


def test_fixed_and_broken_by_loss():
    before = {
        "examples": [
            {"source": f"f:{i}", "prompt": f"p{i}", "loss": loss}
            for i, loss in enumerate([2.0, 2.0, 2.0, 1.0])
        ]
    }
    after = {
        "examples": [
            {"source": f"f:{i}", "prompt": f"p{i}", "loss": loss}
            for i, loss in enumerate([1.0, 1.99, 3.0, 0.5])
        ]
    }
    result = fixed_and_broken(before, after)
    assert result["kind"] == "loss" and result["num_compared"] == 4
    # Largest fall first; 2.0 -> 1.99 is within the noise threshold.
    assert [i["prompt"] for i in result["fixed"]] == ["p0", "p3"]
    assert [i["prompt"] for i in result["broken"]] == ["p2"]
    assert result["broken"][0]["loss_before"] == 2.0 and result["broken"][0]["change"] == pytest.approx(1.0)


def test_fixed_and_broken_by_correctness_matches_by_source():
    before = {
        "examples": [
            {"source": "a", "text": "x", "label": "pos", "predicted": "neg", "correct": False},
            {"source": "b", "text": "y", "label": "neg", "predicted": "neg", "correct": True},
            {"source": "c", "text": "z", "label": "neg", "predicted": "pos", "correct": False},
        ]
    }
    after = {
        "examples": [
            {"source": "b", "text": "y", "label": "neg", "predicted": "pos", "correct": False},
            {"source": "a", "text": "x", "label": "pos", "predicted": "pos", "correct": True},
            {"source": "c", "text": "z", "label": "neg", "predicted": "pos", "correct": False},
        ]
    }
    result = fixed_and_broken(before, after)
    assert result["kind"] == "correct"
    assert [(i["text"], i["predicted_before"], i["predicted_after"]) for i in result["fixed"]] == [
        ("x", "neg", "pos")
    ]
    assert [i["text"] for i in result["broken"]] == ["y"]
    assert result["num_fixed"] == 1 and result["num_broken"] == 1


def test_fixed_and_broken_without_examples():
    assert fixed_and_broken({}, {"loss": 1.0})["kind"] is None


def test_paired_generations_pair_by_prompt():
    before = {"generations": [{"prompt": "q2", "output": "old2"}, {"prompt": "q1", "output": "old1"}]}
    after = {
        "generations": [
            {"prompt": "q1", "output": "new1", "reference": "r1", "rouge_l": 0.5},
            {"prompt": "q2", "output": "new2"},
        ]
    }
    rows = paired_generations(before, after)
    assert [(r["prompt"], r["before"], r["after"]) for r in rows] == [
        ("q1", "old1", "new1"),
        ("q2", "old2", "new2"),
    ]
    assert rows[0]["reference"] == "r1" and rows[0]["rouge_l_after"] == 0.5
    only_before = paired_generations(before, {})
    assert [(r["before"], r["after"]) for r in only_before] == [("old2", None), ("old1", None)]
    assert set(compare(before, after)) == {"metrics", "examples", "generations", "benchmarks"}
