"""One process per run directory: a second `tunesmith train` or `--resume` on a directory in use
exits 2 naming the running process (real concurrent processes); the lock of a dead process is
taken over; a run that failed before writing anything leaves no directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunesmith import api
from tunesmith.errors import UserError
from tunesmith.train.rundir import LOCK_FILE, RunDir

from ..conftest import tiny_config
from .helpers import instruct_file, make_config, step_records

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")


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


def test_a_second_train_or_resume_on_a_running_directory_exits_2_naming_the_holder(tiny_llama, tmp_path):
    config = tiny_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        train__max_steps=100_000,
        train__num_threads=1,
        train__save_every=2,
        train__keep_last=1,
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "runs" / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tunesmith", "train", str(config_file)]
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_steps(run_dir / "metrics.jsonl", first, num_steps=3)
        for extra in ([], ["--resume"]):
            second = subprocess.run(
                [*command, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # the running one is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130
    steps = [r["step"] for r in step_records(run_dir)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved rows


def test_the_stale_lock_of_a_dead_process_is_taken_over(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=2)
    api.train(config)
    run_dir = tmp_path / "runs" / "run"
    # What a SIGKILLed run leaves: the file, naming a process that is gone (the OS dropped its flock).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_FILE).write_text(f"pid {dead.pid} on host elsewhere\n")
    more = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=3)
    result = api.train(more, resume=True)
    assert result.steps == 3
    assert f"pid {os.getpid()}" in (run_dir / LOCK_FILE).read_text()


def test_a_lock_held_by_another_open_file_refuses_in_process_too(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs")
    held = RunDir(tmp_path / "runs" / "run").lock()
    try:
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            api.train(config)
    finally:
        held.release()
    assert not (tmp_path / "runs" / "run").exists()  # the lock alone made it; releasing removed it
    api.train(config)  # free again


def test_a_run_failing_before_it_writes_leaves_no_directory(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"\n')
    config = make_config(tiny_llama, bad, tmp_path / "runs")
    with pytest.raises(UserError):
        api.train(config)
    assert not (tmp_path / "runs" / "run").exists()


def test_training_on_prepared_data_releases_the_lock_on_every_path(tiny_llama, tmp_path):
    """train/run.py train_prepared (what `data curve` trains its subsets with) takes the run's lock
    and gives it back whether the run ends or fails."""
    import dataclasses

    from tunesmith.models.load import load_tokenizer
    from tunesmith.tasks import get_task
    from tunesmith.train.run import train_prepared

    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs")
    tokenizer = load_tokenizer(config.model.name, config.model)
    prepared = get_task("instruct").prepare_data(config, tokenizer)
    result = train_prepared(config, tokenizer, prepared)
    assert result.steps == config.train.max_steps and "loss" in result.after
    RunDir(result.run_dir).lock().release()  # free: the run gave it back

    def broken(rows):
        raise RuntimeError("a batch that cannot be built")

    failing = config.model_copy(update={"run_name": "failing"})
    with pytest.raises(RuntimeError, match="cannot be built"):
        train_prepared(failing, tokenizer, dataclasses.replace(prepared, collate=broken))
    RunDir(tmp_path / "runs" / "failing").lock().release()
