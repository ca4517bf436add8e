"""Checkpoints that survive crashes: written to a temporary name, fsynced, then renamed.

Layout of `checkpoints/step-000123/` (the format is the resume contract; keep it stable):
    trainable.safetensors   trainable parameters by name (LoRA weights, a head, or all weights)
    optimizer.pt            optimizer state (tensors and plain values only; loaded weights_only=True)
    rng.pt                  torch CPU (+ CUDA) random generator states
    trainer_state.json      step, total steps, format version; written last

A directory named `step-N` exists only after the rename, which is atomic, so a crash mid-save
leaves at most a `.tmp-*` folder that is never taken as a checkpoint. Old checkpoints are
deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from tunesmith.errors import NonFiniteError, UserError
from tunesmith.models.load import safetensors_damage
from tunesmith.outputs import fsync_dir, fsync_file
from tunesmith.train.rundir import disk_error, is_disk_error

if TYPE_CHECKING:
    from tunesmith.config import Config
    from tunesmith.train.rundir import RunDir

FORMAT_VERSION = 1
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    total_steps: int
    format_version: int = FORMAT_VERSION
    skipped_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad
    }


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    checkpoints_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep_last: int,
) -> Path:
    """Write a complete checkpoint atomically, then rotate old ones. Returns its directory."""
    weights = trainable_state(model)
    bad = [name for name, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        # Never persist a poisoned model: resuming from it would only spread the NaNs.
        raise NonFiniteError(f"step {state.step}: refusing to checkpoint non-finite weights (e.g. {bad[0]})")
    _refuse_symlink(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(state.step)
    temp = checkpoints_dir / f".tmp-{checkpoint_name(state.step)}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        temp.mkdir()
        save_file(weights, str(temp / TRAINABLE_FILE))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, temp / OPTIMIZER_FILE
        )
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, temp / RNG_FILE)
        (temp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        for child in temp.iterdir():
            fsync_file(child)
        fsync_dir(temp)
        if final.exists():  # a checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.replace(temp, final)
        fsync_dir(checkpoints_dir)
    except BaseException as exc:
        # Whatever failed (a full disk raises OSError, torch.save's RuntimeError or safetensors'
        # SafetensorError), the half-written folder goes; the older checkpoints stay trusted.
        # The disk is judged first: removing the folder frees the space a full disk lacked.
        needed = sum(t.numel() * t.element_size() for t in weights.values()) * 3
        disk_failed = is_disk_error(exc, temp)
        shutil.rmtree(temp, ignore_errors=True)
        if disk_failed:
            raise disk_error(final, needed, exc, " (older checkpoints kept)") from None
        raise
    rotate_checkpoints(checkpoints_dir, keep_last)
    return final


def _refuse_symlink(checkpoints_dir: Path) -> None:
    # A symlinked checkpoints/ would make saves, rotation and resume act outside the run directory.
    if checkpoints_dir.is_symlink():
        raise UserError(
            f"{checkpoints_dir} is a symlink; refusing to read or write checkpoints through it "
            "(replace it with a real folder)"
        )


def list_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temporary folders and symlinks are never listed."""
    _refuse_symlink(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and not child.is_symlink() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_damage(path: Path) -> str | None:
    """Why a listed checkpoint cannot be resumed from (an empty or truncated file), or None.
    Cheap: parses trainer_state.json and the safetensors header, opens the .pt zip directories."""
    state_file = path / STATE_FILE
    try:
        raw = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{state_file} is empty or truncated"
    if not isinstance(raw, dict) or not isinstance(raw.get("step"), int):
        return f"{state_file} holds no step"
    if (path / TRAINABLE_FILE).exists() or not any(path.glob("*.distcp")):
        damage = safetensors_damage(path / TRAINABLE_FILE)
        if damage:
            return damage
        for name in (OPTIMIZER_FILE, RNG_FILE):
            if not zipfile.is_zipfile(path / name):
                return f"{path / name} is missing, empty or truncated"
    return None


def resumable_checkpoint(checkpoints_dir: Path, warnings: list[str] | None = None) -> Path | None:
    """The newest complete checkpoint that is not damaged; the damaged newer ones are named in
    `warnings` (and skipped, never deleted)."""
    for _, path in reversed(list_checkpoints(checkpoints_dir)):
        damage = checkpoint_damage(path)
        if damage is None:
            return path
        if warnings is not None:
            warnings.append(f"checkpoint {path.name} is damaged ({damage}); falling back to an older one")
    return None


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    found = list_checkpoints(checkpoints_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)
    for child in checkpoints_dir.iterdir():
        if child.name.startswith(".tmp-") and not child.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(child, ignore_errors=True)  # left by a crashed save


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG state. Refuses pickles that are not plain data."""
    if path.is_symlink():
        raise UserError(f"checkpoint {path} is a symlink; refusing to follow it")
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path} is not a complete tunesmith checkpoint (no {STATE_FILE})")
    damage = checkpoint_damage(path)
    if damage:
        raise UserError(f"checkpoint {path} is damaged: {damage}; resume from another one (--resume-from)")
    raw_state = json.loads(state_file.read_text())
    if raw_state.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {raw_state.get('format_version')} is not {FORMAT_VERSION}"
        )
    try:
        weights = load_file(str(path / TRAINABLE_FILE))
    except Exception as exc:  # safetensors parses, never unpickles: a damaged or foreign file
        raise UserError(
            f"{path / TRAINABLE_FILE}: not a valid safetensors file ({type(exc).__name__}); "
            "the checkpoint is damaged or was not written by tunesmith"
        ) from None
    parameters = dict(model.named_parameters())
    expected = {n for n, p in parameters.items() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        unexpected = sorted(set(weights) - expected)[:3]
        raise UserError(
            f"{path}: checkpoint does not match the model (missing {missing}, unexpected {unexpected}); "
            "was it written with another model or adapter setting?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    try:
        # weights_only=True: a checkpoint is data; a pickle that wants to run code is refused.
        optim_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        rng = torch.load(path / RNG_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path}: refusing to load the optimizer/RNG state ({type(exc).__name__}); it is not plain tensor "
            "data, which a tunesmith checkpoint always is. Do not resume from files you do not trust"
        ) from None
    optimizer.load_state_dict(optim_state["optimizer"])
    scheduler.load_state_dict(optim_state["scheduler"])
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainerState(**raw_state)


def resume_point(
    run_dir: RunDir, config: Config, resume_from: str | Path | None, warn: Callable[[str], None]
) -> tuple[Path | None, int | None]:
    """(checkpoint, its step) to resume from: the newest complete, undamaged checkpoint (damaged
    newer ones are warned about and skipped), or `resume_from`; after checking the config still fits
    it. A run that never reached a checkpoint starts over: (None, 0)."""
    from tunesmith.train import rundir

    if resume_from is not None:
        checkpoint: Path | None = _chosen_checkpoint(run_dir, Path(resume_from))
    else:
        warnings: list[str] = []
        checkpoint = resumable_checkpoint(run_dir.checkpoints, warnings)
        for warning in warnings:
            warn(warning)
        if checkpoint is None and warnings:
            raise UserError(
                f"--resume: every checkpoint of {run_dir.path} is damaged ({warnings[-1]}); "
                "start a new run (another run_name)"
            )
    if checkpoint is None and run_dir.holds_anything():
        if run_dir.marker.is_file() and not list_checkpoints(run_dir.checkpoints):
            warn(f"--resume: {run_dir.path} never reached a checkpoint; starting the run over")
            return None, 0
        raise UserError(f"--resume: {run_dir.path} has no complete checkpoint to resume from")
    if checkpoint is None:
        return None, None
    damage = checkpoint_damage(checkpoint)
    if damage:
        raise UserError(f"--resume-from: checkpoint {checkpoint} is damaged: {damage}")
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    changed = rundir.check_resume_compatible(run_dir, config)
    if changed:
        warn(f"resuming with changed {', '.join(changed)}")
    return checkpoint, step


def _chosen_checkpoint(run_dir: RunDir, chosen: Path) -> Path:
    """--resume-from: a step-N folder of this run's checkpoints/ (a name or a path)."""
    candidates = {path.name: path for _, path in list_checkpoints(run_dir.checkpoints)}
    for key in (chosen.name, str(chosen)):
        if key in candidates and (not chosen.is_absolute() or chosen.resolve() == candidates[key].resolve()):
            return candidates[key]
    names = ", ".join(candidates) or "none"
    raise UserError(
        f"--resume-from: {chosen} is not a complete checkpoint of {run_dir.path} (its checkpoints: {names})"
    )
