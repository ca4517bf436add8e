"""report.html from run directories with some files missing, hostile text, classification results;
the `tunesmith report` command; the W&B/MLflow logging sinks (faked: no network)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import LoggingConfig
from tunesmith.errors import UserError
from tunesmith.report.html import fmt, write_report
from tunesmith.train import metrics_log


def make_run(path, before=None, after=None, metrics=None, task="instruct", **files):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tunesmith-run.json").write_text(json.dumps({"task": task}))
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for name, value in (("eval/before.json", before), ("eval/after.json", after), *files.items()):
        if value is not None:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_report_of_a_run_with_only_its_marker(tmp_path):
    html = write_report(make_run(tmp_path / "r")).read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "No training metrics" in html
    assert "No evaluation in this run" in html
    assert "config.yaml is absent" in html


def test_report_without_before_evaluation_still_shows_after(tmp_path):
    metrics = [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "tokens_per_second": 100.0 + s} for s in range(1, 6)]
    metrics.insert(2, {"step": 2, "event": "nonfinite", "what": "loss", "loss": "nan"})
    metrics.append("not json")
    run = make_run(tmp_path / "r", after={"loss": 1.25, "perplexity": 3.49}, metrics=metrics)
    (run / "metrics.jsonl").write_text("\n".join(m if isinstance(m, str) else json.dumps(m) for m in metrics))
    html = write_report(run).read_text()
    assert "the base model was not evaluated" in html
    assert '<figure class="plot" id="plot-loss">' in html and "<svg" in html
    assert "1 unreadable line(s) skipped" in html
    assert "1.250" in html  # the after loss in the table


def test_report_escapes_model_output_and_has_no_outside_references(tmp_path):
    hostile = '<script>alert("x")</script><img src="http://example.com/a.png">'
    generation = {"prompt": hostile, "output": hostile, "reference": "ok"}
    run = make_run(
        tmp_path / "r",
        before={"loss": 2.0, "generations": [generation]},
        after={"loss": 1.0, "generations": [generation]},
        **{"config.yaml": "task: instruct\nnote: <b>x</b>\n"},
    )
    html = write_report(run).read_text()
    assert "<script>" not in html and "http://example.com" not in html.replace("&quot;http://example.com", "")
    assert "&lt;script&gt;alert" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    # every src/href of the page stays inside it
    import re

    for attribute in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attribute.startswith(("#", "data:")), attribute


def test_report_of_a_classification_run(tmp_path):
    def side(accuracy, matrix, predicted):
        return {
            "accuracy": accuracy,
            "macro_f1": accuracy - 0.1,
            "per_class": {
                "neg": {"precision": 0.5, "recall": 0.6, "f1": 0.55, "support": 10},
                "pos": {"precision": 0.7, "recall": 0.8, "f1": 0.75, "support": 12},
            },
            "confusion_matrix": {"labels": ["neg", "pos"], "matrix": matrix},
            "majority_baseline": 0.55,
            "examples": [
                {"text": "fine film", "label": "pos", "predicted": predicted, "correct": predicted == "pos"}
            ],
        }

    run = make_run(
        tmp_path / "r",
        before=side(0.5, [[5, 5], [6, 6]], "neg"),
        after=side(0.8, [[9, 1], [3, 9]], "pos"),
        **{"summary.json": {"task": "classify", "base_model": "m", "steps": 10, "seconds": 75.0}},
    )
    html = write_report(run).read_text()
    assert html.count('<table class="confusion">') == 2
    assert "Per class (base → tuned)" in html
    assert "Fixed by the tuning: 1 of 1" in html and "fine film" in html
    assert "1m 15s" in html


def test_report_shows_data_doctor_findings(tmp_path):
    check = {
        "verdict": "warn",
        "task": "instruct",
        "stats": {"records": 12},
        "findings": [
            {
                "id": "dup",
                "severity": "warning",
                "title": "Duplicate samples",
                "count": 3,
                "examples": ["train.jsonl:4", {"line": 9}],
                "detail": "3 rows occur twice",
            }
        ],
    }
    html = write_report(make_run(tmp_path / "r", **{"eval/data_check.json": check})).read_text()
    assert "Duplicate samples" in html and "3 rows occur twice" in html and "train.jsonl:4" in html


def test_report_command_rebuilds_and_refuses_other_folders(tmp_path):
    run = make_run(tmp_path / "r", after={"loss": 1.0})
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()
    (tmp_path / "other").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert "not a tunesmith run directory" in result.output


def test_fmt():
    assert fmt(None) == "–"
    assert fmt(12345) == "12,345"
    assert fmt(2.0) == "2.000"
    assert fmt(0.01234) == "0.0123"
    assert fmt(float("nan")) == "nan"


def test_missing_logging_extra_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it fails as if not installed
    with pytest.raises(UserError, match=r"tunesmith\[mlflow\]"):
        metrics_log.check_logging_available(LoggingConfig(mlflow=True))
    metrics_log.check_logging_available(LoggingConfig())


def test_wandb_and_mlflow_receive_the_same_scalars(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("wandb", step, values))

        def finish(self):
            calls.append(("wandb", "finish"))

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake_wandb.init = lambda project, name, config: (
        calls.append(("wandb", "init", project, name)) or FakeRun()
    )
    fake_mlflow = types.ModuleType("mlflow")
    fake_mlflow.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    fake_mlflow.start_run = lambda run_name: calls.append(("mlflow", "start", run_name))
    fake_mlflow.log_params = lambda params: calls.append(("mlflow", "params", len(params)))
    fake_mlflow.log_metrics = lambda values, step: calls.append(("mlflow", step, values))
    fake_mlflow.end_run = lambda: calls.append(("mlflow", "end"))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow)

    logging = LoggingConfig(wandb=True, wandb_project="p", mlflow=True)
    metrics_log.check_logging_available(logging)
    log = metrics_log.MetricsLogger(tmp_path, logging=logging, run_name="run-1")
    log({"step": 3, "loss": 1.5, "lr": 0.001, "event_note": "text is not a scalar"})
    log({"note": "no step: file only"})
    log.close()
    assert ("wandb", "init", "p", "run-1") in calls and ("mlflow", "start", "run-1") in calls
    assert ("wandb", 3, {"loss": 1.5, "lr": 0.001}) in calls
    assert ("mlflow", 3, {"loss": 1.5, "lr": 0.001}) in calls
    assert ("wandb", "finish") in calls and ("mlflow", "end") in calls
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_report_of_a_preference_run_plots_pair_metrics_and_shows_both_replies(tmp_path):
    metrics = [
        {
            "step": s,
            "loss": 0.7 - 0.05 * s,
            "pair_accuracy": 0.5 + 0.05 * s,
            "lr": 1e-3,
            "chosen_reward": 0.1 * s,
            "rejected_reward": -0.1 * s,
            "reward_margin": 0.2 * s,
        }
        for s in range(1, 5)
    ]
    metrics += [{"step": 2, "eval_accuracy": 0.6, "eval_margin": 0.4, "eval_num_pairs": 8}]
    pair = {"prompt": "Name a colour.", "chosen": "Blue.", "reference": "Blue.", "rejected": "I refuse."}
    run = make_run(
        tmp_path / "r",
        before={"accuracy": 0.5, "margin": 0.0, "num_pairs": 8, "generations": [{**pair, "output": "Um"}]},
        after={"accuracy": 0.75, "margin": 1.2, "num_pairs": 8, "generations": [{**pair, "output": "Red."}]},
        metrics=metrics,
        task="preference",
    )
    html = write_report(run).read_text()
    assert "train pair accuracy" in html and "train token accuracy" not in html
    # The rewards and margin the DPO loss logs each step are drawn.
    assert 'id="plot-loss-scalars"' in html and "reward margin" in html and "chosen reward" in html
    assert 'id="plot-margin"' in html and 'id="plot-accuracy"' in html
    assert "<th>rejected</th>" in html and "I refuse." in html and "Red." in html and "Um" in html


def test_report_of_an_instruct_run_keeps_token_accuracy(tmp_path):
    metrics = [{"step": s, "loss": 2.0 / s, "token_accuracy": 0.1 * s} for s in range(1, 4)]
    html = write_report(make_run(tmp_path / "r", metrics=metrics)).read_text()
    assert "train token accuracy" in html and "pair accuracy" not in html and 'id="plot-margin"' not in html
