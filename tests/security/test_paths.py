"""Paths: output inside the base model directory, names with ../, symlinked run or checkpoint
directories are refused; nothing is written outside the run directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.errors import UserError
from tunesmith.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

from ..conftest import tiny_config
from ..reliability.helpers import instruct_file, make_config
from ..reliability.test_checkpoint_faults import _toy


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_output_inside_the_base_model_directory_is_refused(tiny_llama, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    before = _tree(model_dir)
    config = make_config(model_dir, instruct_file(tmp_path), model_dir / "runs")
    with pytest.raises(UserError, match="inside the base model directory"):
        api.train(config)
    assert _tree(model_dir) == before


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/abs", "..", "runs/inner", "~user"])
def test_run_names_that_leave_output_dir_are_refused(tiny_llama, tmp_path, name):
    from tunesmith.config import build_config

    values = tiny_config(tiny_llama, tmp_path / "train.jsonl", tmp_path / "runs", run_name=name)
    with pytest.raises(UserError, match="run_name"):
        build_config(values)


def test_symlinked_run_directory_is_refused(tiny_llama, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    os.symlink(outside, tmp_path / "runs" / "run")
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs")
    for resume in (False, True):
        with pytest.raises(UserError, match="symlink"):
            api.train(config, resume=resume)
    assert list(outside.iterdir()) == []


def test_symlinked_checkpoint_directories_are_skipped_and_refused(tmp_path):
    model, optimizer, scheduler = _toy()
    elsewhere = tmp_path / "elsewhere"
    real = save_checkpoint(elsewhere, model, optimizer, scheduler, TrainerState(7, 10), keep_last=2)

    # A symlinked step-N inside checkpoints/ is never taken as a checkpoint, nor loaded.
    checkpoints = tmp_path / "run" / "checkpoints"
    save_checkpoint(checkpoints, model, optimizer, scheduler, TrainerState(1, 10), keep_last=2)
    os.symlink(real, checkpoints / "step-000007")
    assert [step for step, _ in list_checkpoints(checkpoints)] == [1]
    assert latest_checkpoint(checkpoints).name == "step-000001"
    with pytest.raises(UserError, match="symlink"):
        load_checkpoint(checkpoints / "step-000007", *_toy())

    # A symlinked checkpoints/ folder is refused for listing and for saving (no write outside).
    linked = tmp_path / "linked-run" / "checkpoints"
    linked.parent.mkdir()
    os.symlink(elsewhere, linked)
    before = _tree(elsewhere)
    with pytest.raises(UserError, match="symlink"):
        latest_checkpoint(linked)
    with pytest.raises(UserError, match="symlink"):
        save_checkpoint(linked, model, optimizer, scheduler, TrainerState(9, 10), keep_last=1)
    assert _tree(elsewhere) == before  # rotation did not delete step 7 through the link either


@pytest.fixture
def finished_run(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=1)
    api.train(config)
    return config, tmp_path / "runs" / "run"


@pytest.mark.parametrize("linked", ["checkpoints", "final", "eval", "metrics.jsonl"])
def test_resume_into_a_run_with_symlinks_inside_is_refused(finished_run, tmp_path, linked):
    config, run_dir = finished_run
    outside = tmp_path / "outside"
    target = run_dir / linked
    shutil.move(str(target), str(outside))
    os.symlink(outside, target)
    before = _tree(outside) if outside.is_dir() else outside.read_bytes()
    values = config.model_dump(mode="json")
    values["train"]["max_steps"] = 2
    from tunesmith.config import build_config

    with pytest.raises(UserError, match="symlink"):
        api.train(build_config(values), resume=True)
    assert (_tree(outside) if outside.is_dir() else outside.read_bytes()) == before


def test_a_run_writes_only_inside_its_run_directory(tiny_llama, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    train_file = instruct_file(work)
    before = {p for p in tmp_path.rglob("*")}
    config = make_config(tiny_llama, train_file, work / "runs", train__max_steps=1)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = api.train(config)
    finally:
        os.chdir(cwd)
    created = {p for p in tmp_path.rglob("*")} - before
    run_dir = result.run_dir.resolve()
    outside = [
        p
        for p in created
        if p.resolve() != run_dir.parent and run_dir not in p.resolve().parents and p.resolve() != run_dir
    ]
    assert outside == []
