"""A real full filesystem (a 2 MB tmpfs mounted by the test; skipped where mounting is not
permitted): every write of a run fails with the one-line error naming what, the space needed and
free, exit code 2, no `.tmp-*` left, and the last complete checkpoint stays trusted."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith import api
from tunesmith.errors import UserError
from tunesmith.train.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    checkpoint_damage,
    list_checkpoints,
)

from ..conftest import tiny_config
from .helpers import RecordingProgress, instruct_file, make_config, step_records


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("needs Linux mount")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Write a file until the filesystem is full (real ENOSPC), then give back `leave` bytes;
    returns the file (delete it to free space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
    for size in (4096, 512, 1):  # the last pages too
        with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as handle:
            while True:
                handle.write(b"\0" * size)
    assert shutil.disk_usage(directory).free < 4096
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
        assert abs(shutil.disk_usage(directory).free - leave) < 4096
    return filler


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def test_full_disk_mid_run_keeps_the_last_checkpoint_and_says_so_in_one_line(tiny_llama, tmp_path, small_fs):
    train_file = instruct_file(tmp_path)
    filled: list[Path] = []

    def fill_after_step_3(step: int, record: dict) -> None:
        if step == 3 and not filled:
            filled.append(fill(small_fs))

    # save_every=2: step-2 is written, the disk fills at step 3, the save of step 4 fails for real
    # (torch.save / safetensors raise their own errors); log_every keeps metrics.jsonl still.
    settings = dict(train__max_steps=6, train__save_every=2, train__log_every=1000, train__keep_last=3)
    config = make_config(tiny_llama, train_file, small_fs / "runs", **settings)
    with pytest.raises(UserError) as caught:
        api.train(config, progress=RecordingProgress(on_step=fill_after_step_3))
    message = str(caught.value)
    assert "\n" not in message
    assert "step-000004" in message and "MiB free" in message and "needs about" in message
    run_dir = small_fs / "runs" / "run"
    assert _leftovers(run_dir) == []
    (step, newest), *_ = reversed(list_checkpoints(run_dir / "checkpoints"))
    assert step == 2 and checkpoint_damage(newest) is None

    # Still full: --resume through the CLI is one line and exit code 2, never a traceback.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(tiny_llama, train_file, small_fs / "runs", **settings)))
    command = [sys.executable, "-m", "tunesmith", "train", str(config_file)]
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "disk full" in result.stderr and "MiB free" in result.stderr and "Traceback" not in result.stderr
    assert _leftovers(run_dir) == []

    # Space freed: the resume continues from step 2 and finishes.
    filled[0].unlink()
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "step-000002" in result.stdout
    assert [r["step"] for r in step_records(run_dir)] == [6]  # log_every=1000: the last step only


def test_a_new_run_on_a_full_disk_exits_2_and_leaves_no_temporary_files(tiny_llama, tmp_path, small_fs):
    fill(small_fs)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(tiny_config(tiny_llama, instruct_file(tmp_path), small_fs / "runs"))
    )
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(config_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "disk full" in result.stderr or "disk write failed" in result.stderr
    ) and "Traceback" not in result.stderr
    assert _leftovers(small_fs) == []


def test_final_and_reports_on_a_full_disk_are_one_line_errors(tiny_llama, tmp_path, small_fs, monkeypatch):
    """The disk fills after the last checkpoint: final/ (an atomic directory) fails cleanly."""
    from tunesmith.train import run as run_module

    real_save = run_module.save

    def save_on_a_full_disk(current):
        fill(small_fs)
        return real_save(current)

    monkeypatch.setattr(run_module, "save", save_on_a_full_disk)
    config = make_config(tiny_llama, instruct_file(tmp_path), small_fs / "runs", train__max_steps=2)
    with pytest.raises(UserError, match="MiB free") as caught:
        api.train(config)
    assert "final" in str(caught.value)
    run_dir = small_fs / "runs" / "run"
    assert _leftovers(run_dir) == [] and not (run_dir / "final").exists()
    (step, newest), *_ = reversed(list_checkpoints(run_dir / "checkpoints"))
    assert step == 2 and checkpoint_damage(newest) is None


# Where a checkpoint save meets the full disk: each file is written by another library, which
# says so in its own way (safetensors: "(os error 28)"; torch.save: "basic_ios::clear: iostream
# error", "unexpected pos"; the JSON state file: OSError ENOSPC).
CHECKPOINT_FILES = (TRAINABLE_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
RAISED_BY = {TRAINABLE_FILE: "SafetensorError", OPTIMIZER_FILE: "RuntimeError", RNG_FILE: "RuntimeError"}


@pytest.mark.parametrize("failing_file", CHECKPOINT_FILES)
def test_a_full_disk_inside_each_checkpoint_file_is_one_line_for_train_and_resume(
    tiny_llama, tmp_path, small_fs, failing_file
):
    train_file = instruct_file(tmp_path)
    run_dir = small_fs / "runs" / "run"
    filled: list[Path] = []

    def leave_room_up_to_the_failing_file(step: int, record: dict) -> None:
        # step-2 is on disk: the step-4 files are as large. Leave room for the files written
        # before the failing one and half of it, so the disk fills inside that very write.
        if step == 3 and not filled:
            previous = run_dir / "checkpoints" / "step-000002"
            sizes = [(previous / name).stat().st_blocks * 512 for name in CHECKPOINT_FILES]
            index = CHECKPOINT_FILES.index(failing_file)
            pages = sizes[index] // 4096 // 2
            filled.append(fill(small_fs, leave=sum(sizes[:index]) + pages * 4096))

    settings = dict(train__max_steps=6, train__save_every=2, train__log_every=1000, train__keep_last=3)
    config = make_config(tiny_llama, train_file, small_fs / "runs", **settings)
    with pytest.raises(UserError) as caught:
        api.train(config, progress=RecordingProgress(on_step=leave_room_up_to_the_failing_file))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("disk full while writing"), message
    assert "step-000004" in message and "MiB free" in message
    raised = caught.value.__context__  # what the library raised, kept out of the user's sight
    assert type(raised).__name__ == RAISED_BY.get(failing_file, "OSError"), repr(raised)
    assert _leftovers(run_dir) == []
    (step, newest), *_ = reversed(list_checkpoints(run_dir / "checkpoints"))
    assert step == 2 and checkpoint_damage(newest) is None

    # --resume on the still-full disk: one line, exit code 2, whichever write meets the full disk.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(tiny_llama, train_file, small_fs / "runs", **settings)))
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(config_file), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "disk full while writing" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _leftovers(run_dir) == []
    assert checkpoint_damage(newest) is None


def test_is_disk_error_asks_the_filesystem_not_the_words(tmp_path, small_fs):
    """Each library's own failure on a real full disk is a disk error; the same words on a
    filesystem with room, or a program error, are not."""
    from safetensors.torch import save_file

    from tunesmith.train.rundir import is_disk_error

    fill(small_fs)
    tensors = {"weight": torch.zeros(4096)}
    writes = {
        "torch.save": lambda path: torch.save(tensors, path),
        "safetensors": lambda path: save_file(tensors, str(path)),
        "json": lambda path: path.write_text(json.dumps({"step": 1}) * 500),
    }
    for name, write in writes.items():
        target = small_fs / f"{name}.out"
        with pytest.raises(Exception) as caught:
            write(target)
        assert is_disk_error(caught.value, target), (name, caught.value)
        target.unlink(missing_ok=True)
    words = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert not is_disk_error(words, tmp_path / "out")  # tmp_path has room: not the disk
    assert not is_disk_error(RuntimeError("shape mismatch"), tmp_path / "out")
    assert is_disk_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_error(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_error(OSError(errno.ENOENT, "No such file"))


def test_a_full_disk_under_the_token_cache_is_one_line_naming_data_cache_dir(tiny_llama, tmp_path, small_fs):
    """Pretraining tokenizes the corpus into data.cache_dir first: a full disk there is one line."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 200)
    (small_fs / "cache").mkdir()
    fill(small_fs)
    config = make_config(
        tiny_llama,
        corpus,
        tmp_path / "runs",
        task="pretrain",
        adapter={"method": "lora", "r": 4, "alpha": 8},
        data={"train": str(corpus), "max_seq_len": 64, "cache_dir": str(small_fs / "cache"), "check": False},
    )
    with pytest.raises(UserError) as caught:
        api.train(config)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("disk full while writing the token cache"), message
    assert "data.cache_dir" in message and "MiB free" in message
    assert list((small_fs / "cache").iterdir()) == []  # no partial entry left
