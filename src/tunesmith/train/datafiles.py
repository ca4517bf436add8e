"""Fingerprints of the data files a run reads, so that `--resume` knows its data.

Exact resume replays the same rows in the same order; that holds only while the files under the
checkpoint are the ones it was trained on. A run records each file's size, modification time and
a SHA-256 of its content (whole files up to `WHOLE_FILE_BYTES`; beyond, the first and last MiB
with the size and mtime) in `data_files.json`; `--resume` compares and refuses a changed, added
or missing file by name, unless told that the change is intended (`--allow-data-change`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.data.load import ROW_SUFFIXES, TEXT_SUFFIXES, expand_paths, looks_like_hub_id
from tunesmith.errors import UserError

FINGERPRINT_FILE = "data_files.json"
WHOLE_FILE_BYTES = 64 * 2**20  # hashed whole up to this size (~0.1 s); larger: head and tail
EDGE_BYTES = 2**20
DATA_KEYS = ("train", "eval", "replay", "general_text")  # the data.* keys that name files


def data_specs(config: Config) -> list[str]:
    """Every file, folder or glob the config's data section names (hub ids left out)."""
    values = config.data.model_dump(mode="json")
    specs: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            specs.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            specs.append(value["path"])

    for key in DATA_KEYS:
        collect(values.get(key))
    return [s for s in specs if not looks_like_hub_id(s)]


def fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if stat.st_size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(-EDGE_BYTES, 2)
            digest.update(handle.read(EDGE_BYTES))
    whole = stat.st_size <= WHOLE_FILE_BYTES
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest(), "whole": whole}


def fingerprints(config: Config) -> dict[str, dict[str, Any]]:
    """{resolved path: fingerprint} of every data file the config reads."""
    files: dict[str, dict[str, Any]] = {}
    for spec in data_specs(config):
        try:
            paths = expand_paths(spec, ROW_SUFFIXES | TEXT_SUFFIXES)
        except UserError:
            continue  # a missing file fails where the data loads, with its own message
        for path in paths:
            files[str(path.resolve())] = fingerprint(path)
    return files


def changed_files(saved: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """What differs, one phrase per file: changed (content or size), added, missing."""
    changes: list[str] = []
    for name in sorted(set(saved) | set(current)):
        before, now = saved.get(name), current.get(name)
        if before is None:
            changes.append(f"{name} (added)")
        elif now is None:
            changes.append(f"{name} (missing)")
        elif before.get("size") != now["size"] or before.get("sha256") != now["sha256"]:
            changes.append(f"{name} (changed)")
        elif not now["whole"] and before.get("mtime_ns") != now["mtime_ns"]:
            changes.append(f"{name} (modified: only its first and last MiB are hashed)")
    return changes


def record(run_path: Path, config: Config) -> None:
    """data_files.json of the run: the fingerprints of the files it trains on now."""
    from tunesmith.train.rundir import atomic_write

    atomic_write(Path(run_path) / FINGERPRINT_FILE, json.dumps(fingerprints(config), indent=1))


def check_unchanged(run_path: Path, config: Config, allow_change: bool) -> list[str]:
    """--resume: refuse when a data file differs from what the run recorded (returns the changes
    when `allow_change`; a run of an earlier version, with no record, passes)."""
    path = Path(run_path) / FINGERPRINT_FILE
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"{path}: damaged; pass --allow-data-change to resume and record the data again"
        ) from None
    changes = changed_files(saved, fingerprints(config))
    if changes and not allow_change:
        raise UserError(
            f"--resume: the data changed since the checkpoint: {'; '.join(changes[:5])}"
            f"{f' and {len(changes) - 5} more' if len(changes) > 5 else ''}. Exact resume needs the same rows: "
            "restore the files, start a new run, or pass --allow-data-change to go on with the new data"
        )
    return changes


def check_on_resume(run_path: Path, config: Config, allow_change: bool, warn: Callable[[str], None]) -> bool:
    """The resume's data check: refused by name (or, allowed, warned about); returns whether the
    run's data_files.json must be written (a change, or a run of an earlier version without one)."""
    changes = check_unchanged(run_path, config, allow_change)
    if changes:
        warn(
            f"--allow-data-change: resuming on changed data ({'; '.join(changes[:3])}); "
            "the rows after the checkpoint are not those of an uninterrupted run"
        )
    return bool(changes) or not (Path(run_path) / FINGERPRINT_FILE).is_file()
