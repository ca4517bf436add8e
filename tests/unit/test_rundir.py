"""The run directory's one owner: atomic writes, the metrics reader, the model's metadata file,
the saved config read back without redacted secrets, and the presentation of progress."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tunesmith.train import rundir
from tunesmith.train.rundir import RunDir


def test_atomic_write_writes_text_bytes_and_json_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    rundir.atomic_write(tmp_path / "a" / "t.txt", "héllo")
    rundir.atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01")
    rundir.atomic_write_json(tmp_path / "a" / "j.json", {"loss": float("nan"), "hf_token": "hf_secretvalue"})
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    saved = json.loads((tmp_path / "a" / "j.json").read_text())
    assert saved == {"loss": "nan", "hf_token": "***"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "j.json", "t.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_whole(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        rundir.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_directory_is_complete_or_absent(tmp_path: Path) -> None:
    final = tmp_path / "final"
    with pytest.raises(RuntimeError), rundir.atomic_directory(final) as temp:
        (temp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash while saving")
    assert list(tmp_path.iterdir()) == []
    with rundir.atomic_directory(final) as temp:
        (temp / "model.safetensors").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    assert (final / "model.safetensors").read_bytes() == b"x"


def test_read_metrics_skips_unreadable_lines_and_says_how_many(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n\n{"step": 2, "loss": 1.5}\n')
    problems: list[str] = []
    assert [r["loss"] for r in rundir.read_metrics(tmp_path, problems)] == [2.0, 1.5]
    assert problems == ["metrics.jsonl: 1 unreadable line(s) skipped"]
    assert rundir.read_metrics(tmp_path / "absent") == []


def test_model_info_is_one_file_and_still_reads_an_earlier_runs_labels_json(tmp_path: Path) -> None:
    final = RunDir(tmp_path).final
    final.mkdir()
    rundir.write_model_info(final, {"labels": ["neg", "pos"], "multi_label": False})
    rundir.write_model_info(final, {"task": "classify", "base_model": "/models/base"})
    assert [p.name for p in final.iterdir()] == [rundir.MODEL_INFO_FILE]
    info = rundir.read_model_info(final)
    assert info == {
        "labels": ["neg", "pos"],
        "multi_label": False,
        "task": "classify",
        "base_model": "/models/base",
    }

    old = tmp_path / "old-final"
    old.mkdir()
    (old / "tunesmith.json").write_text(json.dumps({"task": "classify", "base_model": "b"}))
    (old / "labels.json").write_text(json.dumps({"labels": ["a", "b"], "threshold": 0.5}))
    assert rundir.read_model_info(old) == {
        "labels": ["a", "b"],
        "threshold": 0.5,
        "task": "classify",
        "base_model": "b",
    }
    assert rundir.base_model_of(str(old)) == "b"


def test_resolve_trained_and_base_model_of_a_run_and_an_adapter(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.final.mkdir(parents=True)
    rundir.write_model_info(run.final, {"base_model": "/models/tiny"})
    assert rundir.resolve_trained(run.path) == run.final
    assert rundir.base_model_of(run.path) == "/models/tiny"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/other"}))
    assert rundir.resolve_trained(adapter) == adapter
    assert rundir.base_model_of(adapter) == "/models/other"
    assert rundir.base_model_of(tmp_path / "nothing") is None


def test_eval_never_reads_a_redacted_secret_back_from_the_saved_config(tmp_path: Path) -> None:
    from tunesmith.evaluate.runner import eval_config

    run = RunDir(tmp_path / "run")
    run.final.mkdir(parents=True)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    saved = {
        "task": "instruct",
        "model": {"name": "/models/tiny", "token": "***"},
        "data": {"train": "x.jsonl", "hub_token": "***", "max_seq_len": 64},
        "run_name": "run",
    }
    run.config.write_text(yaml.safe_dump(saved))
    config = eval_config(str(run.path), str(data), None, None)
    assert config.model.token is None  # not the literal '***'
    assert config.data.max_seq_len == 64  # the rest of the saved config is kept
    assert "***" not in json.dumps(config.model_dump(mode="json"))


def test_console_progress_prints_messages_and_colours_warning_labels() -> None:
    from rich.console import Console

    from tunesmith.ui import ConsoleProgress, format_message

    console = Console(record=True, width=200, color_system=None)
    progress = ConsoleProgress(console, show_bar=False)
    progress.start(10, 0)
    progress.step(1, {"loss": 1.0})
    progress.message("data: train: 10 examples [x]")
    progress.message("warning: resuming with changed train.max_steps", "warning")
    progress.close()
    assert console.export_text().splitlines() == [
        "data: train: 10 examples [x]",
        "warning: resuming with changed train.max_steps",
    ]
    assert format_message("data warning: duplicates: 2", "warning").startswith(
        "[yellow]data warning[/yellow]"
    )


def test_version_option_prints_the_version() -> None:
    from typer.testing import CliRunner

    from tunesmith import __version__
    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == __version__
