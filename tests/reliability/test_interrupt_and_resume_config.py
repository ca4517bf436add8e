"""SIGTERM/SIGINT: a complete checkpoint, a distinct exit code, and `--resume` continues from it.
Resume with a changed config: incompatible changes refused with the keys, harmless ones warned.
A run directory holding another run is refused, not overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunesmith import api
from tunesmith.config import build_config
from tunesmith.errors import TrainingInterrupted, UserError
from tunesmith.train.checkpoint import latest_checkpoint, list_checkpoints

from ..conftest import tiny_config
from .helpers import RecordingProgress, final_weights, instruct_file, make_config, step_records

REPO = Path(__file__).resolve().parents[2]


def _constant_lr_config(tiny_llama: Path, tmp_path: Path, max_steps: int) -> dict:
    # A constant LR, so a longer max_steps does not change the steps before the stop.
    return tiny_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        run_name="run",
        adapter__dropout=0.1,
        train__max_steps=max_steps,
        train__lr_scheduler="constant",
        train__warmup_ratio=0.0,
        train__num_threads=2,
        train__log_every=1,
    )


def _wait_for_steps(metrics: Path, process: subprocess.Popen, num_steps: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        if (
            metrics.is_file()
            and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= num_steps
        ):
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError("training made no progress")


def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tiny_llama, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(_constant_lr_config(tiny_llama, tmp_path, max_steps=100_000)))
    run_dir = tmp_path / "runs" / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tunesmith", "train", str(config_file)]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_steps(run_dir / "metrics.jsonl", process, num_steps=2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (
        stderr
    )  # TrainingInterrupted: distinct from success, errors (2) and NaN (3)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and "resume with --resume" in stderr and checkpoint.name in stderr
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 2
    assert not (run_dir / "final").exists()

    # Continue to two steps past the stop; max_steps is a harmless change (warned, not refused).
    total = stopped_at + 2
    result = subprocess.run(
        [*command, f"train.max_steps={total}", "--resume"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "train.max_steps" in result.stdout
    resumed = step_records(run_dir)
    assert [r["step"] for r in resumed] == list(range(1, total + 1))

    # The same run without interruption, in this process.
    reference_config = _constant_lr_config(tiny_llama, tmp_path, max_steps=total)
    reference_config["run_name"] = "reference"
    api.train(build_config(reference_config))
    reference = step_records(tmp_path / "runs" / "reference")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    weights, reference_weights = final_weights(run_dir), final_weights(tmp_path / "runs" / "reference")
    assert all((weights[name] == tensor).all() for name, tensor in reference_weights.items())


@pytest.fixture
def finished_run(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=2)
    api.train(config)
    return config, tmp_path / "runs" / "run"


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("changes", "keys"),
    [
        ({"adapter": {"r": 8}}, ["adapter.r"]),
        (
            {"train": {"batch_size": 4, "gradient_accumulation_steps": 2}},
            ["train.batch_size", "train.gradient_accumulation_steps"],
        ),
        ({"data": {"max_seq_len": 64, "packing": False}}, ["data.max_seq_len", "data.packing"]),
        ({"model": {"name": "OTHER_MODEL"}}, ["model.name"]),
    ],
)
def test_resume_with_incompatible_config_is_refused_with_the_keys(finished_run, tiny_models, changes, keys):
    config, run_dir = finished_run
    values = config.model_dump(mode="json")
    for section, fields in changes.items():
        for key, value in fields.items():
            values[section][key] = str(tiny_models["qwen2"]) if value == "OTHER_MODEL" else value
    values["train"]["max_steps"] = 3
    before = _snapshot(run_dir)
    with pytest.raises(UserError) as error:
        api.train(build_config(values), resume=True)
    message = str(error.value)
    for key in keys:
        assert key in message
    assert "train.max_steps" not in message  # harmless changes are not listed as blocking
    assert _snapshot(run_dir) == before  # nothing written


def test_resume_with_harmless_changes_warns_and_continues(finished_run):
    config, run_dir = finished_run
    values = config.model_dump(mode="json")
    values["train"]["max_steps"] = 3
    values["train"]["eval_every"] = 1
    console = RecordingProgress()
    result = api.train(build_config(values), resume=True, progress=console)
    assert result.steps == 3
    warning = next(line for line in console.lines if "warning" in line)
    assert "train.max_steps" in warning and "train.eval_every" in warning
    assert [r["step"] for r in step_records(run_dir)] == [1, 2, 3]
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [2, 3]


def test_resume_of_a_finished_run_is_a_no_op(finished_run):
    config, run_dir = finished_run
    result = api.train(config, resume=True)
    assert result.steps == 2
    assert [r["step"] for r in step_records(run_dir)] == [1, 2]


def test_a_run_directory_holding_another_run_is_refused_not_overwritten(finished_run, tmp_path):
    config, run_dir = finished_run
    before = _snapshot(run_dir)
    with pytest.raises(UserError, match="already holds a run"):
        api.train(config)
    assert _snapshot(run_dir) == before

    # A folder that is not a tunesmith run is never written into, even with --resume.
    foreign = tmp_path / "runs" / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    values = config.model_dump(mode="json")
    values["run_name"] = "foreign"
    for resume in (False, True):
        with pytest.raises(UserError):
            api.train(build_config(values), resume=resume)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_sigint_in_process_stops_with_a_checkpoint(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=5)

    def on_step(step, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as interrupted:
        api.train(config, progress=RecordingProgress(on_step))
    assert Path(interrupted.value.checkpoint_dir).name == "step-000002"
    assert TrainingInterrupted.exit_code == 130
    # The handlers are restored: SIGINT is KeyboardInterrupt again outside training.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_after_the_data_file_changed_in_place_is_refused_naming_it(finished_run):
    """Same path, other rows: exact resume would silently train on other data. Refused by name;
    --allow-data-change goes on with a warning and records the new data."""
    config, run_dir = finished_run
    data_file = Path(config.data.train)
    assert json.loads((run_dir / "data_files.json").read_text())[str(data_file.resolve())]["size"] > 0
    rows = data_file.read_text().splitlines()
    data_file.write_text("\n".join(reversed(rows)) + "\n")  # same size, same rows, another order
    values = config.model_dump(mode="json")
    values["train"]["max_steps"] = 3
    before = _snapshot(run_dir)
    with pytest.raises(
        UserError, match=rf"data changed since the checkpoint: {data_file.resolve()} \(changed\)"
    ):
        api.train(build_config(values), resume=True)
    assert _snapshot(run_dir) == before  # nothing written
    console = RecordingProgress()
    result = api.train(build_config(values), resume=True, allow_data_change=True, progress=console)
    assert result.steps == 3
    assert any("--allow-data-change" in line for line in console.lines)
    # The new data is the run's data now: a later resume compares with it.
    values["train"]["max_steps"] = 4
    assert api.train(build_config(values), resume=True).steps == 4


def test_resume_with_an_untouched_data_file_goes_on_and_a_touch_alone_is_not_a_change(finished_run):
    config, run_dir = finished_run
    os.utime(config.data.train, (1_000_000_000, 1_000_000_000))  # mtime moved, bytes the same
    values = config.model_dump(mode="json")
    values["train"]["max_steps"] = 3
    assert api.train(build_config(values), resume=True).steps == 3
