"""Checkpoints under faults: SIGKILL mid-save, disk full, rotation only after success."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tunesmith.errors import NonFiniteError, UserError
from tunesmith.train import checkpoint as checkpoint_module
from tunesmith.train.checkpoint import (
    STATE_FILE,
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from tunesmith.train.optim import build_optimizer, build_scheduler


def _toy(seed: int = 0):
    """A tiny model with an optimizer and scheduler that have state worth saving."""
    from tunesmith.config import TrainConfig

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    config = TrainConfig(learning_rate=1e-2, warmup_ratio=0.0)
    optimizer = build_optimizer(model, config, "cpu")
    scheduler = build_scheduler(optimizer, config, total_steps=10)
    return model, optimizer, scheduler


def _train_steps(model, optimizer, scheduler, num_steps: int) -> None:
    for _ in range(num_steps):
        loss = model(torch.randn(3, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from tests.reliability.test_checkpoint_faults import _toy, _train_steps
    from tunesmith.train import checkpoint
    from tunesmith.train.checkpoint import TrainerState, save_checkpoint

    checkpoints_dir, kill_after = sys.argv[1], sys.argv[2]
    model, optimizer, scheduler = _toy()
    _train_steps(model, optimizer, scheduler, 2)
    save_checkpoint(checkpoint.Path(checkpoints_dir), model, optimizer, scheduler, TrainerState(2, 10), keep_last=2)
    _train_steps(model, optimizer, scheduler, 2)

    real_save = torch.save
    def save_then_die(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        if str(path).endswith(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies with the checkpoint half written
    checkpoint.torch.save = save_then_die
    save_checkpoint(checkpoint.Path(checkpoints_dir), model, optimizer, scheduler, TrainerState(4, 10), keep_last=2)
    print("not reached")
    """
)


@pytest.mark.parametrize("kill_after", ["optimizer.pt", "rng.pt"])
def test_sigkill_mid_save_keeps_previous_checkpoint_and_resume_works(tmp_path, kill_after):
    checkpoints_dir = tmp_path / "checkpoints"
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(checkpoints_dir), kill_after],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    # The half-written checkpoint exists only under its temporary name...
    leftovers = [p.name for p in checkpoints_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and (checkpoints_dir / leftovers[0] / "trainable.safetensors").is_file()
    # ...and is never taken as complete: the previous checkpoint is the newest one.
    assert [step for step, _ in list_checkpoints(checkpoints_dir)] == [2]
    latest = latest_checkpoint(checkpoints_dir)
    assert latest is not None and latest.name == "step-000002"

    # The previous checkpoint is intact: it resumes to exactly the state an uninterrupted run had at step 2.
    model, optimizer, scheduler = _toy(seed=123)
    state = load_checkpoint(latest, model, optimizer, scheduler)
    assert state.step == 2
    expected_model, expected_optimizer, expected_scheduler = _toy()
    _train_steps(expected_model, expected_optimizer, expected_scheduler, 2)
    for (name, got), (_, want) in zip(
        model.state_dict().items(), expected_model.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name
    assert scheduler.state_dict()["last_epoch"] == 2

    # The next save cleans up the crashed temporary folder.
    save_checkpoint(checkpoints_dir, model, optimizer, scheduler, TrainerState(3, 10), keep_last=2)
    assert not [p for p in checkpoints_dir.iterdir() if p.name.startswith(".tmp-")]


def test_partial_checkpoint_directory_without_state_file_is_not_complete(tmp_path):
    model, optimizer, scheduler = _toy()
    good = save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(1, 10), keep_last=5)
    broken = save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(2, 10), keep_last=5)
    (broken / STATE_FILE).unlink()  # e.g. copied by hand and cut short
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(UserError, match="not a complete tunesmith checkpoint"):
        load_checkpoint(broken, model, optimizer, scheduler)


def _fail_with_enospc_on(monkeypatch, what: str) -> None:
    real_save = checkpoint_module.torch.save

    def save_full(obj, path, *args, **kwargs):
        if str(path).endswith(what):
            with open(path, "wb") as handle:
                handle.write(b"\0" * 10)  # a few bytes made it before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_full)


def test_disk_full_gives_clear_error_and_keeps_older_checkpoints(tmp_path, monkeypatch):
    model, optimizer, scheduler = _toy()
    for step in (1, 2):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(step, 10), keep_last=2)
    before = {p.name: sorted(f.name for f in p.iterdir()) for p in tmp_path.iterdir()}

    _fail_with_enospc_on(monkeypatch, "optimizer.pt")
    with pytest.raises(UserError) as error:
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(3, 10), keep_last=2)
    message = str(error.value)
    assert "disk full" in message
    assert str(tmp_path / "step-000003") in message  # the path
    assert "MiB" in message and "needs about" in message  # the size needed
    # Rotation (keep_last=2) would have deleted step 1: it must not, the new save failed.
    assert {p.name: sorted(f.name for f in p.iterdir()) for p in tmp_path.iterdir()} == before
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2]


def test_rotation_deletes_only_after_a_successful_save(tmp_path):
    model, optimizer, scheduler = _toy()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(step, 10), keep_last=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    saved_state = json.loads((tmp_path / "step-000003" / STATE_FILE).read_text())
    assert saved_state["step"] == 3


def test_disk_full_through_the_cli_wrapper_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    import typer

    from tunesmith import cli

    model, optimizer, scheduler = _toy()
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(1, 10), keep_last=1)
    _fail_with_enospc_on(monkeypatch, "rng.pt")

    def action():
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(2, 10), keep_last=1)

    with pytest.raises(typer.Exit) as exit_:
        cli._run(action)
    assert exit_.value.exit_code == 2
    stderr = capsys.readouterr().err
    assert "disk full" in stderr and "Traceback" not in stderr
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    model, optimizer, scheduler = _toy()
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(1, 10), keep_last=2)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(2, 10), keep_last=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    assert os.listdir(tmp_path) == ["step-000001"]
