"""End to end on a tiny model: summary.json's prediction block after `tunesmith train`, and
`tunesmith data curve` with three fractions and few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tunesmith.cli import app
from tunesmith.config import build_config
from tunesmith.train.run import run


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r and "step" in r and "event" not in r]


@pytest.mark.slow
def test_train_with_predict_probes_and_records_predicted_next_to_used(
    tiny_llama: Path, instruct_rows: list[dict], tmp_path: Path
) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    values = tiny_config(tiny_llama, train_file, tmp_path / "runs", train__max_steps=6, train__predict=True)
    result = run(build_config(values))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    prediction = summary["prediction"]
    assert prediction["source"] == "preflight"
    for key in ("tokens_per_second", "peak_memory_bytes", "wall_seconds"):
        figure = prediction[key]
        assert figure["predicted"] > 0 and figure["measured"] > 0, key
        assert figure["ratio"] == figure["measured"] / figure["predicted"]
    assert summary["train_seconds"] == prediction["wall_seconds"]["measured"]
    assert any("probe:" in note for note in prediction["notes"])
    assert "Predicted vs used" in (result.run_dir / "report.html").read_text()
    # The probe changes nothing the run computes: the same losses as a run without it.
    values.update(run_name="no-probe")
    values["train"]["predict"] = False
    plain = run(build_config(values))
    assert _losses(plain.run_dir) == _losses(result.run_dir)


def test_train_checks_the_prediction_select_wrote(
    tiny_llama: Path, instruct_rows: list[dict], tmp_path: Path
) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    # A prediction select wrote into the config is used when it was made for these settings...
    values = tiny_config(
        tiny_llama, train_file, tmp_path / "runs", run_name="from-select", train__max_steps=2
    )
    values["prediction"] = {
        "source": "select",
        "tokens_per_second": 1234.0,
        "seconds_per_step": 0.5,
        "peak_memory_bytes": 10**9,
        "batch_size": 2,
        "max_seq_len": 128,
        "method": "lora",
    }
    config = build_config(values)
    summary = json.loads((run(config).run_dir / "summary.json").read_text())
    assert summary["prediction"]["source"] == "select"
    assert summary["prediction"]["tokens_per_second"]["predicted"] == 1234.0
    # The run's own tokens (its 2 steps' batches as collated, padding included) at select's 1234
    # tokens/s, not 2 steps x select's 0.5 s a step: a step's time follows its batch's shape.
    from tunesmith.models.load import load_tokenizer
    from tunesmith.tasks import get_task
    from tunesmith.train.prediction import planned_tokens_per_step

    prepared = get_task("instruct").prepare_data(config, load_tokenizer(str(tiny_llama), config.model))
    tokens = 2 * planned_tokens_per_step(config, prepared, 2)
    assert 0 < tokens <= 2 * 2 * 128
    assert summary["prediction"]["wall_seconds"]["predicted"] == pytest.approx(tokens / 1234.0)
    # The measured side is the same work, the steps: the evaluations and checkpoints of the fit
    # phase are timed apart (SST-2 with eval_every 50 took 1.65x its prediction when they counted).
    assert summary["prediction"]["wall_seconds"]["measured"] == summary["train_seconds"]
    assert summary["train_seconds"] + summary["eval_seconds"] + summary[
        "checkpoint_seconds"
    ] == pytest.approx(summary["fit_seconds"])
    assert (
        summary["eval_seconds"] == 0.0 and summary["checkpoint_seconds"] > 0
    )  # eval_every 0; the final save
    values["run_name"], values["train"]["eval_every"] = "evaluating", 1
    summary = json.loads((run(build_config(values)).run_dir / "summary.json").read_text())
    assert summary["eval_seconds"] > 0
    assert summary["train_seconds"] < summary["fit_seconds"] - summary["eval_seconds"] + 1e-9
    values["train"]["eval_every"] = 0
    # ... and set aside, with the reason, when the run's settings differ.
    values["run_name"], values["prediction"]["batch_size"] = "changed", 8
    summary = json.loads((run(build_config(values)).run_dir / "summary.json").read_text())
    assert summary["prediction"]["source"] == "estimate"
    assert summary["prediction"]["tokens_per_second"]["predicted"] is None
    assert summary["prediction"]["peak_memory_bytes"]["predicted"] > 0
    assert "batch_size" in summary["prediction"]["notes"][0]


@pytest.mark.slow
def test_data_curve_end_to_end(tiny_llama: Path, instruct_rows: list[dict], tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    values = tiny_config(tiny_llama, train_file, tmp_path / "runs", train__max_steps=8)
    values["data"]["eval_fraction"] = 0.2
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(values))
    out = tmp_path / "curve"
    result = CliRunner().invoke(
        app,
        ["data", "curve", str(config_file), "--fractions", "0.25,0.5,0.75", "--out", str(out), "--verify"],
    )
    assert result.exit_code == 0, result.output
    curve = json.loads((out / "curve.json").read_text())
    assert curve["metric"] == "loss" and curve["higher_is_better"] is False
    points = curve["points"]
    assert [p["fraction"] for p in points] == [0.25, 0.5, 0.75, 1.0]
    # Two seeds per fitted size (the default), one run on all the data (the check, as a user runs it).
    assert [len(p["runs"]) for p in points] == [2, 2, 2, 1] and curve["repeats"] == 2
    for p in points[:3]:
        assert p["value"] == pytest.approx(sum(p["runs"]) / 2)
        assert len(p["run_dirs"]) == 2
    assert curve["seed_spread"] is not None and curve["fit"]["measurement_error"] > 0
    rows = [p["rows"] for p in points]
    assert rows == sorted(rows) and rows[-1] == curve["rows"]
    assert [p["steps"] for p in points] == [
        max(1, round(8 * r / rows[-1])) for r in rows
    ]  # scaled by the share
    assert all(p["value"] > 0 for p in points)
    for key in ("1x", "2x", "4x"):
        band = curve["predictions"][key]
        assert band["low"] <= band["predicted"] <= band["high"]
    assert isinstance(curve["verification"]["within_band"], bool)
    assert curve["verdict"].startswith(("more data", "saturating", "cannot tell yet"))
    assert curve["cost"]["estimated_seconds"] > 0 and "cost:" in result.output
    assert (out / "curve.html").is_file() and "learning curve" in (out / "curve.html").read_text()
    assert (out / "curve.png").is_file()
    assert not any((out / "runs").glob("*/checkpoints/*"))  # the curve keeps metrics, not weights

    # A budget that cannot hold one step per size is refused up front, with the figure.
    refused = CliRunner().invoke(
        app, ["data", "curve", str(config_file), "--out", str(tmp_path / "c2"), "--max-minutes", "0.00001"]
    )
    assert refused.exit_code == 2 and "at least" in refused.output


@pytest.mark.slow
def test_select_probes_classify_through_the_contract_and_writes_its_prediction(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import tunesmith.select as select_module

    words = ["good", "bad", "great", "awful", "fine", "poor"]
    rows = [{"text": f"this is {words[i % 6]} number {i}", "label": i % 2} for i in range(48)]
    data = write_jsonl(tmp_path / "labeled.jsonl", rows)
    out = tmp_path / "select"
    result = select_module.select(
        "classify", str(data), [str(tiny_llama)], cpu=True, sample=8, out_dir=out, probe_seconds=2.0
    )
    best = result["ranked"][0]
    assert best["tokens_per_second"] > 0 and best["seconds_per_step"] > 0
    probe = best["info"]["probe"]
    assert probe["timed_steps"] >= 1 and probe["stopped_by"] in ("steady", "time budget", "step cap")
    config = build_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert config.prediction is not None and config.prediction.source == "select"
    assert config.prediction.batch_size == config.train.batch_size == 8
    assert config.prediction.max_seq_len == config.data.max_seq_len
    assert config.prediction.tokens_per_second == best["tokens_per_second"]
    assert config.prediction.wall_seconds == pytest.approx(best["estimated_seconds"])
    assert config.prediction.peak_memory_bytes > 0
