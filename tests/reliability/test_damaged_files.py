"""Damaged files, really truncated: the newest checkpoint's trainer_state.json or weights ->
warned and the newest complete one is used (or the one `--resume-from` names); a truncated
model.safetensors in a model folder -> exit 2 naming the file. A run killed before its first
checkpoint restarts with --resume; metrics.jsonl holds each step once after a resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.errors import UserError

from .helpers import RecordingProgress, instruct_file, make_config, step_records


@pytest.fixture
def three_checkpoints(tiny_llama, tmp_path) -> Path:
    config = make_config(
        tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__save_every=1, train__keep_last=3
    )
    api.train(config)
    return tmp_path / "runs" / "run"


def _resume(tiny_llama, tmp_path, **kwargs):
    progress = RecordingProgress()
    config = make_config(
        tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__save_every=1, train__keep_last=3
    )
    result = api.train(config, resume=True, progress=progress, **kwargs)
    return result, "\n".join(progress.lines)


@pytest.mark.parametrize(
    "damage",
    ["empty trainer_state.json", "truncated trainer_state.json", "truncated weights", "empty optimizer.pt"],
)
def test_a_damaged_newest_checkpoint_is_warned_about_and_the_previous_one_used(
    three_checkpoints, tiny_llama, tmp_path, damage
):
    newest = three_checkpoints / "checkpoints" / "step-000003"
    if damage == "empty trainer_state.json":
        (newest / "trainer_state.json").write_text("")
    elif damage == "truncated trainer_state.json":
        text = (newest / "trainer_state.json").read_text()
        (newest / "trainer_state.json").write_text(text[: len(text) // 2])
    elif damage == "truncated weights":
        weights = newest / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    else:
        (newest / "optimizer.pt").write_bytes(b"")
    result, lines = _resume(tiny_llama, tmp_path)
    assert "step-000003 is damaged" in lines and "falling back" in lines
    assert "resuming from" in lines and "step-000002" in lines
    assert result.steps == 3
    # The replayed step 3 is logged once.
    assert [r["step"] for r in step_records(three_checkpoints)] == [1, 2, 3]


def test_resume_from_chooses_the_checkpoint(three_checkpoints, tiny_llama, tmp_path):
    result, lines = _resume(tiny_llama, tmp_path, resume_from="step-000001")
    assert "step-000001" in lines and result.steps == 3
    assert [r["step"] for r in step_records(three_checkpoints)] == [1, 2, 3]
    with pytest.raises(UserError, match="not a complete checkpoint .* step-000001"):
        _resume(tiny_llama, tmp_path, resume_from="step-000009")


def test_resume_from_a_damaged_checkpoint_names_the_file(three_checkpoints, tiny_llama, tmp_path):
    (three_checkpoints / "checkpoints" / "step-000002" / "trainer_state.json").write_text("{")
    with pytest.raises(UserError, match="step-000002.*trainer_state.json is empty or truncated"):
        _resume(tiny_llama, tmp_path, resume_from="step-000002")


def test_a_truncated_model_safetensors_exits_2_naming_the_file(tiny_llama, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = make_config(model, instruct_file(tmp_path), tmp_path / "runs")
    with pytest.raises(UserError, match=r"model\.safetensors is truncated"):
        api.train(config)
    weights.write_bytes(b"")
    with pytest.raises(UserError, match=r"model\.safetensors is empty or truncated"):
        api.train(config)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume(tiny_llama, tmp_path):
    class Killed(Exception):
        pass

    def die_at_step_2(step, record):
        if step == 2:
            raise Killed

    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs")
    with pytest.raises(Killed):
        api.train(config, progress=RecordingProgress(on_step=die_at_step_2))
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "checkpoints").exists() and step_records(run_dir)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        api.train(config)
    progress = RecordingProgress()
    result = api.train(config, resume=True, progress=progress)
    assert any("never reached a checkpoint; starting the run over" in line for line in progress.lines)
    assert result.steps == 3
    assert [r["step"] for r in step_records(run_dir)] == [1, 2, 3]
