"""The one rule for every path a verb writes: nothing of the user's is ever deleted or emptied.

A verb may create a new path, fill an empty folder, or replace a path that tunesmith itself made
for the same purpose: a folder holding `OUTPUT_MARKER` that names the purpose, a file whose first
bytes carry `tunesmith:<purpose>` (`generator_tag`), or a file that cannot carry a tag (a CSV) whose
bytes are still exactly what tunesmith wrote there (the ledger of written files, `ledger_path`: path,
purpose, SHA-256; a file the user edited no longer matches). Anything else that exists is refused
with exit code 2, naming the path and the way out. `--overwrite` takes such a path anyway, but
moves the old one aside (`<name>.replaced-<time>`, nothing deleted), and still never touches a
folder holding a run, an input of the command, or a parent of either.

Outputs are built beside their final path (a hidden temporary name made here) and renamed into
place once complete; only a temporary folder made here, or an output of the same purpose that
tunesmith made, is ever removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from tunesmith.errors import UserError

OUTPUT_MARKER = ".tunesmith-output.json"  # in every folder a verb writes: {"purpose": ..., "created": ...}
RUN_MARKER = "tunesmith-run.json"  # in every run directory (train/rundir.py)
RUN_FILES = (RUN_MARKER, "metrics.jsonl")  # either one makes a folder a run
FILE_TAG_BYTES = 4096  # how far into a file its generator tag is looked for
RUN_SEARCH_DEPTH = 3  # how deep a folder is searched for runs before --overwrite moves it aside
LEDGER_ENTRIES = 2000  # files remembered in the ledger (the oldest are forgotten first)


def generator_tag(purpose: str) -> str:
    """What a file written for `purpose` carries near its start (a JSON key, an HTML meta tag)."""
    return f"tunesmith:{purpose}"


@dataclass
class Claim:
    """A path a verb may write: how it was found ('new', 'empty', 'ours' or 'user' with
    --overwrite) and, once written, where a user's old path was moved aside to."""

    path: Path
    purpose: str
    state: str
    directory: bool
    kept_as: Path | None = None


def claim_output(
    path: str | Path,
    purpose: str,
    *,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    directory: bool = True,
    flag: str = "--out",
    inside_run: bool = False,
) -> Claim:
    """Check `path` may be written for `purpose` (see the module docstring); refuse with a UserError.
    `inside_run`: the output belongs inside a run directory (eval results, the report)."""
    path = Path(path).expanduser()
    where = f"{flag} {path}"
    if path.is_symlink():
        raise UserError(f"{where} is a symbolic link; give the real path (nothing was written)")
    resolved = path.resolve()
    for source in _existing_inputs(inputs):
        if resolved == source or resolved in source.parents:
            what = "is" if resolved == source else "holds"
            raise UserError(f"{where} {what} an input of this command ({source}); write the output elsewhere")
    for parent in resolved.parents:
        if parent.is_file() or (parent.exists() and not parent.is_dir()):
            raise UserError(
                f"{where}: {parent} is a file, not a folder; give another path (nothing was written)"
            )
        if not inside_run and any((parent / name).is_file() for name in RUN_FILES):
            raise UserError(
                f"{where} is inside the run {parent}; write outputs outside runs (nothing was written)"
            )
    if not path.exists():
        return Claim(path, purpose, "new", directory)
    if directory != path.is_dir():
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(
            f"{where} is {kind} of yours; give a path that does not exist yet (nothing was written)"
        )
    if directory:
        return _claim_folder(path, purpose, overwrite, where)
    if _file_is_ours(path, purpose):
        return Claim(path, purpose, "ours", directory)
    if overwrite:
        return Claim(path, purpose, "user", directory)
    raise UserError(
        f"{where} already exists and tunesmith did not write it; choose another path, or pass --overwrite "
        f"(the old file is kept as {path.name}.replaced-<time>)"
    )


def _existing_inputs(inputs: Iterable[str | Path | None]) -> Iterator[Path]:
    """The command's inputs that exist, resolved (globs expanded)."""
    for item in inputs:
        if item is None:
            continue
        text = os.path.expanduser(str(item))
        for name in sorted(glob.glob(text, recursive=True)) if any(c in text for c in "*?[") else [text]:
            if os.path.exists(name):
                yield Path(name).resolve()


def _claim_folder(path: Path, purpose: str, overwrite: bool, where: str) -> Claim:
    if not any(path.iterdir()):
        return Claim(path, purpose, "empty", True)
    found = folder_purpose(path)
    if found != purpose and not overwrite:
        made = f"tunesmith's {found} output, not {purpose}" if found else "not written by tunesmith"
        _refuse_taken_folder(where, path, made)
    if holds_a_run(path):
        raise UserError(f"{where} holds a tunesmith run; give a new folder (nothing was written)")
    if found == purpose:
        return Claim(path, purpose, "ours", True)
    if os.path.ismount(path):
        raise UserError(f"{where} is a mount point holding files; give a new folder (nothing was written)")
    return Claim(path, purpose, "user", True)


def _refuse_taken_folder(where: str, path: Path, made: str) -> NoReturn:
    raise UserError(
        f"{where} already exists and is {made}; choose a new folder, or pass --overwrite (the old folder "
        f"is kept as {path.name}.replaced-<time>, nothing is deleted)"
    )


def folder_purpose(path: Path) -> str | None:
    """The purpose named by a folder's OUTPUT_MARKER (None: not a tunesmith output)."""
    marker = Path(path) / OUTPUT_MARKER
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("purpose")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def holds_a_run(path: Path, depth: int = RUN_SEARCH_DEPTH) -> bool:
    """True when `path` is a run directory or holds one within `depth` levels."""
    if any((path / name).is_file() for name in RUN_FILES):
        return True
    if depth <= 0:
        return False
    try:
        children = [c for c in path.iterdir() if c.is_dir() and not c.is_symlink()]
    except OSError:
        return False
    return any(holds_a_run(child, depth - 1) for child in children)


def _file_is_ours(path: Path, purpose: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(FILE_TAG_BYTES)
    except OSError:
        return False
    return generator_tag(purpose).encode() in head or _in_ledger(path, purpose)


# --------------------------------------------------------------------------------------------
# The ledger of written files: what lets an untagged output (a CSV) be replaced by its own verb.


def ledger_path() -> Path:
    return Path("~/.cache/tunesmith/outputs.json").expanduser()


def _read_ledger() -> dict[str, dict[str, object]]:
    try:
        files = json.loads(ledger_path().read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}  # no ledger, or a damaged one: every untagged file counts as the user's
    return files if isinstance(files, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _in_ledger(path: Path, purpose: str) -> bool:
    """Whether tunesmith wrote this file for `purpose` and nobody changed a byte of it since."""
    entry = _read_ledger().get(str(path.resolve()))
    if not isinstance(entry, dict) or entry.get("purpose") != purpose:
        return False
    try:
        return entry.get("size") == path.stat().st_size and entry.get("sha256") == _sha256(path)
    except OSError:
        return False


def _record_in_ledger(path: Path, purpose: str, payload: bytes) -> None:
    """Remember a written file; a ledger that cannot be written (a read-only home) only means the
    next run needs --overwrite for this file, so it never fails the verb."""
    files = _read_ledger()
    files.pop(str(path.resolve()), None)
    files[str(path.resolve())] = {
        "purpose": purpose,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    kept = dict(list(files.items())[-LEDGER_ENTRIES:])
    ledger = ledger_path()
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        handle_fd, temp_name = tempfile.mkstemp(dir=ledger.parent, prefix=f".{ledger.name}.tmp-")
    except OSError:
        return
    try:
        with os.fdopen(handle_fd, "w") as handle:
            json.dump({"version": 1, "files": kept}, handle)
        os.replace(temp_name, ledger)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """A folder's entries to disk (a rename into it survives a crash); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    for child in folder.rglob("*"):
        if child.is_file() and not child.is_symlink():
            fsync_file(child)
    fsync_dir(folder)


def _aside_name(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.replaced-{stamp}")
    number = 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = path.with_name(f"{path.name}.replaced-{stamp}-{number}")
    return candidate


def _temp_folder(claim: Claim) -> Path:
    if claim.state == "empty" and os.path.ismount(claim.path):
        # A rename cannot cross into a mount point: build inside it (it holds nothing else).
        return Path(tempfile.mkdtemp(dir=claim.path, prefix=".tunesmith-tmp-"))
    claim.path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=claim.path.parent, prefix=f".{claim.path.name}.tmp-"))


def write_marker(folder: Path, purpose: str) -> None:
    (Path(folder) / OUTPUT_MARKER).write_text(
        json.dumps({"purpose": purpose, "created": datetime.now().isoformat(timespec="seconds")}),
        encoding="utf-8",
    )


@contextlib.contextmanager
def output_directory(claim: Claim) -> Iterator[Path]:
    """A temporary folder beside `claim.path` to fill; complete, it is renamed into place (a
    user's old folder taken with --overwrite moved aside first). On failure the temporary folder
    goes and the old path is untouched."""
    temp = _temp_folder(claim)
    try:
        yield temp
        write_marker(temp, claim.purpose)
        fsync_tree(temp)
        _swap_folder(temp, claim)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_dir(claim.path.parent)


def _swap_folder(temp: Path, claim: Claim) -> None:
    path = claim.path
    if temp.parent == path:  # built inside an empty mount point: move the contents up
        for child in temp.iterdir():
            os.rename(child, path / child.name)
        temp.rmdir()
        return
    if claim.state == "ours":
        if folder_purpose(path) != claim.purpose:  # changed since it was claimed: never remove it
            raise UserError(f"{path} changed while the output was written; nothing was replaced")
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rename(path, old / path.name)
        os.rename(temp, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    if claim.state == "user":
        claim.kept_as = _aside_name(path)
        os.rename(path, claim.kept_as)
    try:
        os.rename(temp, path)  # over a missing path or an empty folder (rename replaces those only)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise UserError(f"{path} appeared while the output was written; nothing was replaced") from None
        raise


def write_output_file(claim: Claim, data: str | bytes) -> Path:
    """Write a file output through a temporary name beside it (fsync, rename); a user's old file
    taken with --overwrite is moved aside first."""
    path = claim.path
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle_fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if claim.state == "user":
            claim.kept_as = _aside_name(path)
            os.rename(path, claim.kept_as)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _record_in_ledger(path, claim.purpose, payload)
    return path


def open_output_folder(claim: Claim) -> Path:
    """For verbs that fill a folder as they go (select, data curve): a new or empty folder, or
    one of theirs, is used in place (marked as theirs first); a user's folder taken with
    --overwrite is moved aside and a new one made."""
    path = claim.path
    if claim.state == "user":
        claim.kept_as = _aside_name(path)
        os.rename(path, claim.kept_as)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, claim.purpose)
    return path
