"""Benchmarks through lm-evaluation-harness, end to end on a tiny model with a local task YAML:
before and after in a training run, `tunesmith bench` on the run, and the harness's own CLI agreeing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import tiny_config, write_jsonl

pytest.importorskip("lm_eval")

WORDS = [("great", 1), ("awful", 0), ("fine", 1), ("bad", 0), ("lovely", 1), ("boring", 0), ("superb", 1)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def local_task(directory):
    """A multiple-choice task YAML over a local JSONL file (no hub, no download)."""
    rows = [{"text": f"the film was {word} {i}", "label": label} for i in range(3) for word, label in WORDS]
    data = write_jsonl(directory / "tiny_mc.jsonl", rows)
    (directory / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "output_type: multiple_choice\n"
        "validation_split: validation\n"
        'doc_to_text: "{{text}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"\n'
        "doc_to_target: label\n"
        'doc_to_choice: ["negative", "positive"]\n'
        "metric_list:\n  - metric: acc\n"
        "metadata:\n  version: 1.0\n"
    )
    return directory


@pytest.fixture(scope="module")
def bench_run(tiny_llama, tmp_path_factory):
    from tunesmith import api
    from tunesmith.config import build_config

    root = tmp_path_factory.mktemp("bench-run")
    tasks = local_task(root / "tasks")
    rows = [{"instruction": f"Say the word {w}.", "output": w} for w, _ in WORDS * 4]
    values = tiny_config(tiny_llama, write_jsonl(root / "train.jsonl", rows), root / "runs")
    values["eval"] = {
        "before": True,
        "after": True,
        "forgetting": False,
        "num_prompts": 0,
        "max_tool_call_turns": 0,
        "benchmarks": {"tasks": ["tiny_mc"], "include_path": str(tasks), "limit": 15, "batch_size": 4},
    }
    values["train"].update(max_steps=4, learning_rate=5e-2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.setenv(name, "1")
        result = api.train(build_config(values))
    return result.run_dir, tasks


def test_a_run_measures_the_benchmark_before_and_after(bench_run):
    run_dir, _ = bench_run
    before = json.loads((run_dir / "eval" / "before.json").read_text())["benchmarks"]
    after = json.loads((run_dir / "eval" / "after.json").read_text())["benchmarks"]
    for side in (before, after):
        metric = side["tasks"]["tiny_mc"]["metrics"]["acc,none"]
        assert 0 <= metric["value"] <= 1 and metric["stderr"] > 0
        assert len(side["samples"]["tiny_mc"]["acc,none"]) == 15  # limit: 15 of 21 examples
    (row,) = json.loads((run_dir / "summary.json").read_text())["benchmarks"]
    assert row["task"] == "tiny_mc" and row["paired"] and row["num_paired"] == 15
    assert row["verdict"] in ("better", "worse", "within noise")
    assert "Benchmarks" in (run_dir / "report.html").read_text()


def run_cli_here(*args):
    """The CLI in this process (no interpreter start-up): (exit code, output)."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_bench_verb_measures_the_saved_models_as_the_run_did(bench_run, tmp_path):
    run_dir, tasks = bench_run
    out = tmp_path / "bench"
    code, output = run_cli_here(
        "bench", str(run_dir), "--tasks", "tiny_mc", "--include-path", str(tasks), "--limit", "15",
        "--batch-size", "4", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "tiny_mc" in output and "acc,none" in output
    (row,) = json.loads((out / "comparison.json").read_text())["rows"]
    summary_row = json.loads((run_dir / "summary.json").read_text())["benchmarks"][0]
    # The verb loads the saved models afresh: the same figures as the run measured in memory.
    assert row["base"] == pytest.approx(summary_row["base"], abs=1e-9)
    assert row["tuned"] == pytest.approx(summary_row["tuned"], abs=1e-9)
    assert row["verdict"] == summary_row["verdict"]


@pytest.mark.slow
def test_the_harness_cli_prints_the_base_figure_the_run_measured(bench_run, tmp_path):
    run_dir, tasks = bench_run
    summary = json.loads((run_dir / "summary.json").read_text())
    harness = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf"]
        + ["--model_args", f"pretrained={summary['base_model']},dtype=float32"]
        + ["--tasks", "tiny_mc", "--include_path", str(tasks), "--limit", "15", "--device", "cpu"]
        + ["--batch_size", "4", "--output_path", str(tmp_path / "harness")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert harness.returncode == 0, harness.stderr[-2000:]
    (results_file,) = (tmp_path / "harness").rglob("results*.json")
    harness_acc = json.loads(results_file.read_text())["results"]["tiny_mc"]["acc,none"]
    assert harness_acc == pytest.approx(summary["benchmarks"][0]["base"], abs=1e-9)


def test_an_unknown_benchmark_is_a_user_error(bench_run, tmp_path):
    run_dir, tasks = bench_run
    code, output = run_cli_here(
        "bench", str(run_dir), "--tasks", "no_such_task", "--include-path", str(tasks), "--out", str(tmp_path)
    )
    assert code == 2 and "Traceback" not in output
    assert "eval.benchmarks.tasks" in output
