"""The benchmark verdict: better or worse only beyond the standard error of the change."""

from __future__ import annotations

import math

import pytest

from tunesmith.evaluate.benchmarks import NOISE_Z, compare_benchmarks, paired_stderr, verdict


def side(value: float, stderr: float | None, higher_is_better: bool = True, samples=None) -> dict:
    result = {
        "tasks": {
            "arc": {
                "metrics": {
                    "acc,none": {"value": value, "stderr": stderr, "higher_is_better": higher_is_better}
                }
            }
        }
    }
    if samples is not None:
        result["samples"] = {"arc": {"acc,none": {str(i): float(s) for i, s in enumerate(samples)}}}
    return result


@pytest.mark.parametrize(
    ("tuned", "expected"),
    [
        (0.55, "within noise"),
        (0.5554, "within noise"),
        (0.5556, "better"),
        (0.4446, "within noise"),
        (0.4444, "worse"),
    ],
)
def test_unpaired_rows_flip_only_beyond_the_combined_standard_error(tuned, expected):
    # Two standard errors of 0.02: the change's is hypot(0.02, 0.02) = 0.028284; the bar is 1.96 x that = 0.05544.
    (row,) = compare_benchmarks(side(0.5, 0.02), side(tuned, 0.02))
    assert row["change_stderr"] == pytest.approx(math.hypot(0.02, 0.02))
    assert NOISE_Z * row["change_stderr"] == pytest.approx(0.055437, abs=1e-6)
    assert row["verdict"] == expected and not row["paired"]


def test_lower_is_better_metrics_flip_the_other_way():
    assert verdict(+0.1, 0.01, higher_is_better=False) == "worse"
    assert verdict(-0.1, 0.01, higher_is_better=False) == "better"
    assert verdict(0.1, None) == "no standard error"


def test_paired_rows_use_the_per_example_differences():
    # 100 examples; the tuned model fixes 12 and breaks 2: the mean change is 0.10.
    base = [0] * 50 + [1] * 50
    tuned = [1] * 12 + [0] * 38 + [0] * 2 + [1] * 48
    (row,) = compare_benchmarks(side(0.5, 0.05, samples=base), side(0.6, 0.049, samples=tuned))
    differences = [t - b for t, b in zip(tuned, base, strict=True)]
    mean = sum(differences) / 100
    expected = math.sqrt(sum((d - mean) ** 2 for d in differences) / 99 / 100)
    assert row["paired"] and row["num_paired"] == 100
    assert row["change_stderr"] == pytest.approx(expected)
    # Unpaired the same change (0.10 against a bar of 1.96 x 0.07 = 0.137) would be noise; paired it is not.
    assert row["verdict"] == "better"
    assert verdict(0.1, math.hypot(0.05, 0.049)) == "within noise"


def test_paired_needs_two_common_examples():
    assert paired_stderr({"0": 1.0}, {"0": 0.0, "1": 1.0}) == (None, 1)


def test_benchmarks_on_a_classifier_are_warned_about_not_run():
    from tunesmith.config import build_config, config_warnings

    config = build_config({"task": "classify", "eval": {"benchmarks": {"tasks": ["arc_easy"], "limit": 50}}})
    assert any(w.startswith("eval.benchmarks applies to task") for w in config_warnings(config))
    assert config.eval.benchmarks.limit == 50 and not config_warnings(build_config({"task": "instruct"}))


def test_the_harness_result_is_kept_with_its_errors_and_per_example_scores():
    from tunesmith.evaluate.benchmarks import summarize

    harness = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.1,
            }
        },
        "higher_is_better": {"gsm8k": {"exact_match": True}},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 4}},
        "samples": {
            "gsm8k": [
                {
                    "doc_id": i,
                    "filter": "strict-match",
                    "metrics": ["exact_match"],
                    "exact_match": float(i == 2),
                }
                for i in range(4)
            ]
        },
    }
    kept = summarize(harness)
    assert kept["tasks"]["gsm8k"] == {
        "metrics": {"exact_match,strict-match": {"value": 0.25, "stderr": 0.1, "higher_is_better": True}},
        "num_samples": 4,
    }
    assert kept["samples"]["gsm8k"]["exact_match,strict-match"] == {"0": 0.0, "1": 0.0, "2": 1.0, "3": 0.0}


def test_the_model_card_lists_the_benchmark_rows(tmp_path):
    import json

    from tunesmith.export import model_card

    rows = compare_benchmarks(side(0.5, 0.02), side(0.6, 0.02))
    (tmp_path / "summary.json").write_text(json.dumps({"task": "instruct", "steps": 3, "benchmarks": rows}))
    card = model_card(tmp_path, {"method": "lora"}, None)
    assert "## Benchmarks" in card
    assert "arc acc,none: 0.5000 ± 0.0200 -> 0.6000 ± 0.0200 (+0.1000, better)" in card


def test_a_perplexity_is_paired_on_its_log_likelihoods_and_carried_to_its_own_scale():
    # The harness keeps each example's log-likelihood for a perplexity and reports exp(-mean). The
    # tuned model loses 0.05 nats on every other example: a small, very consistent change.
    base_ll = [-2.0 - 0.01 * i for i in range(100)]
    tuned_ll = [ll - (0.05 if i % 2 else 0.0) for i, ll in enumerate(base_ll)]

    def ppl(lls):
        return math.exp(-sum(lls) / len(lls))

    def with_ll(lls):
        result = side(ppl(lls), 0.5, higher_is_better=False)
        result["samples"] = {"arc": {"acc,none": {str(i): ll for i, ll in enumerate(lls)}}}
        return result

    (row,) = compare_benchmarks(with_ll(base_ll), with_ll(tuned_ll))
    differences = [t - b for t, b in zip(tuned_ll, base_ll, strict=True)]
    mean = sum(differences) / 100
    log_se = math.sqrt(sum((d - mean) ** 2 for d in differences) / 99 / 100)
    assert row["paired"] and row["change_stderr"] == pytest.approx(ppl(tuned_ll) * log_se)
    # On the log scale the change is 0.025 nats against a standard error of 0.0025: beyond noise.
    assert row["change"] == pytest.approx(ppl(tuned_ll) - ppl(base_ll)) and row["verdict"] == "worse"


def test_scores_on_another_scale_than_the_value_are_not_paired():
    # A perplexity change of 0.85 beside per-example differences of a few hundredths of a nat: pairing
    # those would call noise a change. Scores that make neither the mean nor exp(-mean) fall back to the
    # harness's standard errors.
    base = side(16.83, 2.6, higher_is_better=False, samples=[-2.8, -2.9, -2.7, -2.85])
    tuned = side(17.67, 2.5, higher_is_better=False, samples=[-2.85, -2.9, -2.75, -2.9])
    (row,) = compare_benchmarks(base, tuned)
    assert not row["paired"] and row["change_stderr"] == pytest.approx(math.hypot(2.6, 2.5))
    assert row["verdict"] == "within noise"


def test_bench_takes_the_runs_settings_and_limit_all_lifts_the_runs_limit(tmp_path):
    from tunesmith.evaluate.runner import benchmark_settings

    (tmp_path / "final").mkdir()
    (tmp_path / "config.yaml").write_text(
        "eval:\n  benchmarks: {tasks: [arc_easy], limit: 500, batch_size: 4}\n"
    )
    assert benchmark_settings(str(tmp_path), {}).limit == 500
    lifted = benchmark_settings(str(tmp_path), {"limit": "all"})
    assert lifted.limit is None and lifted.tasks == ["arc_easy"] and lifted.batch_size == 4
    assert benchmark_settings(str(tmp_path), {"limit": 20.0, "tasks": ["sst2"]}).limit == 20


def test_the_reports_benchmark_settings_read_as_words():
    from tunesmith.report.benchmarks import settings_text

    text = settings_text(
        {
            "tasks": ["arc_easy", "gsm8k"],
            "limit": 200.0,
            "num_fewshot": None,
            "batch_size": 8,
            "chat_template": False,
        }
    )
    assert text == (
        "tasks arc_easy, gsm8k; limit 200 per task; few-shot: each task's own; batch size 8; "
        "plain prompts (no chat template)"
    )
    assert settings_text(
        {"tasks": ["x"], "num_fewshot": 5, "chat_template": True, "include_path": ["/t"]}
    ) == ("tasks x; every example; 5-shot; chat template on; task YAMLs from /t")
