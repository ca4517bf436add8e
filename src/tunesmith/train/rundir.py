"""Run directories: `runs/<name>/` with config.yaml, metrics.jsonl, checkpoints/, final/, eval/.

`RunDir` names every path of a run; `atomic_write` is the one way files of a run are written
(temporary name, fsync, rename: a file is complete or absent); `read_metrics` the one reader of
metrics.jsonl; `read_model_info`/`write_model_info` the one metadata file of a trained model.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.config import Config, config_to_yaml, redact
from tunesmith.errors import UserError
from tunesmith.outputs import RUN_MARKER, fsync_dir, fsync_tree

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_INFO_FILE = "tunesmith.json"  # in final/: task, base model, method, length, classifier labels
LEGACY_LABELS_FILE = "labels.json"  # the classifier's labels before they moved into tunesmith.json
REDACTED = "***"  # what config.redact puts in place of a secret in the saved config.yaml
LOCK_ATTEMPTS = 20  # a lock held for an instant (a reader asking who holds it) is waited for ~0.2 s
LOCK_FILE = ".tunesmith.lock"  # held (flock) by the one process writing the run; not part of the run


@dataclass(frozen=True)
class RunDir:
    """Every path of one run directory."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def marker(self) -> Path:
        return self.path / RUN_MARKER

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def environment(self) -> Path:
        return self.path / "environment.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def eval_file(self, name: str) -> Path:
        """eval/<name>.json: before, after, data_check."""
        return self.eval_dir / f"{name}.json"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def is_run(self) -> bool:
        return self.path.is_dir() and (self.marker.is_file() or self.metrics.is_file())

    def holds_anything(self) -> bool:
        """True when the directory holds files of a run (the lock file alone is not a run)."""
        return self.path.is_dir() and any(child.name != LOCK_FILE for child in self.path.iterdir())

    def lock(self) -> RunLock:
        """Take the run directory's exclusive lock (see RunLock); refused while another process holds it."""
        return RunLock(self.path)

    @classmethod
    def of_model(cls, model_dir: Path) -> RunDir | None:
        """The run a final/ model directory belongs to (None for a model outside a run)."""
        model_dir = Path(model_dir)
        return cls(model_dir.parent) if model_dir.name == "final" else None


class RunLock:
    """An exclusive OS lock (flock) on `<run>/.tunesmith.lock`, held for as long as the process runs
    the run. The file names its holder (pid, host); the OS drops the lock when the holder dies, so a
    stale file of a dead process is simply taken over. `release()` removes a directory the lock
    alone created (a run that failed before writing anything leaves nothing behind)."""

    def __init__(self, run_path: Path):
        self.path = Path(run_path) / LOCK_FILE
        # The folders the lock itself creates (the run directory, maybe output_dir): removed again
        # by release() when the run wrote nothing into them.
        self.created: list[Path] = []
        probe = Path(run_path)
        while not probe.exists() and probe != probe.parent:
            self.created.append(probe)
            probe = probe.parent
        self.handle: Any = None
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs there are not protected against a second process
            return
        with guarded_write(Path(run_path)):
            Path(run_path).mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            with guarded_write(self.path):
                handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                attempts += 1
                if attempts < LOCK_ATTEMPTS:  # `holder()` (the web app's poll) holds it shared for an instant
                    time.sleep(0.01)
                    continue
                raise UserError(
                    f"run directory {run_path} is in use by {holder}; wait for it to finish (or stop it), "
                    "or choose another run_name"
                ) from None
            # A releasing holder may have removed the file between our open and our lock.
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        self.handle = handle
        with contextlib.suppress(OSError):  # a full disk: the lock holds, its holder goes unnamed
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)

    @staticmethod
    def holder(run_path: Path) -> str | None:
        """Who holds the lock of `run_path` now ("pid N on host H"), or None when nobody does."""
        path = Path(run_path) / LOCK_FILE
        try:
            import fcntl

            handle = open(path, encoding="utf-8")
        except (ImportError, OSError):
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "another process"
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None

    def release(self) -> None:
        if self.handle is None:
            return
        run_path = self.path.parent
        if self.created and not RunDir(run_path).holds_anything():
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                for folder in self.created:
                    folder.rmdir()
        self.handle.close()  # closing drops the flock
        self.handle = None


# Errors that mean the disk (not the program) failed a write: full, over quota, too big, I/O error.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}
# A write that failed while its filesystem has less than this free failed for lack of space:
# a full disk leaves at most one buffer's worth behind (torch.save's zip writer and safetensors
# say so only in words of their own: "iostream error", "unexpected pos").
FULL_DISK_MARGIN = 2**20
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) gives the errno


def free_bytes(path: Path) -> int | None:
    """The space free to us on the filesystem that holds (or would hold) `path`; None when unknown."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _disk_errno(exc: BaseException) -> int | None:
    """The errno of a disk failure anywhere in the exception's chain (an OSError's own, or the
    `(os error N)` a Rust library reports), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if code is None:
            match = _RUST_OS_ERROR.search(str(current))
            code = int(match.group(1)) if match else None
        if code in DISK_ERRNOS:
            return code
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(target: Path) -> bool:
    """True when the filesystem of `target` is left with less than FULL_DISK_MARGIN free."""
    free = free_bytes(target)
    return free is not None and free < FULL_DISK_MARGIN


def is_disk_error(exc: BaseException, target: Path | None = None) -> bool:
    """Whether a failed write of `target` failed because of the disk, whichever library raised:
    an errno that says so, or (what torch.save's RuntimeError never says) the filesystem found
    full once the write failed. Call it before the partial file is removed."""
    if not isinstance(exc, Exception):
        return False
    if _disk_errno(exc) is not None:
        return True
    return target is not None and is_disk_full(target)


def _size(num_bytes: int) -> str:
    return (
        f"{num_bytes / 2**20:.1f} MiB"
        if num_bytes >= 2**20 // 10
        else f"{max(1, round(num_bytes / 1024))} KiB"
    )


def disk_error(what: Path, needed_bytes: int | None, exc: BaseException, note: str = "") -> UserError:
    """The one-line message of a write that failed for the disk (see is_disk_error): what, the
    space needed and the space free."""
    free_now = free_bytes(what)
    free = f"{free_now / 2**20:.1f} MiB free" if free_now is not None else "free space unknown"
    needed = f"needs about {_size(needed_bytes)}, " if needed_bytes else ""
    # No errno: the full filesystem is what told us.
    kind = "disk write failed" if _disk_errno(exc) in (errno.EIO, errno.EROFS, errno.EFBIG) else "disk full"
    return UserError(
        f"{kind} while writing {what}: {needed}{free}; free space or point output_dir elsewhere{note}"
    )


@contextlib.contextmanager
def guarded_write(what: Path, needed_bytes: int | None = None, note: str = "") -> Iterator[None]:
    """Every write of a run goes through here: a disk failure becomes the one-line UserError.
    Wrap the write only, inside its cleanup: the filesystem is looked at before anything is freed."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if is_disk_error(exc, what):
            raise disk_error(what, needed_bytes, exc, note) from None
        raise


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary name, fsync and rename: complete or absent."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with guarded_write(path, len(payload)):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: Path, value: Any) -> Path:
    """`value` as indented JSON, secrets redacted and non-finite floats as strings."""
    return atomic_write(path, json.dumps(redact(json_safe(value)), indent=2, default=str))


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A folder of a run (final/, merged/): filled in a temporary folder beside it, then renamed
    into place whole. Only a path inside a run directory is replaced (the run is tunesmith's);
    outputs elsewhere go through `tunesmith.outputs` (the output-path rule)."""
    path = Path(path)
    if path.exists() and not RunDir(path.parent).is_run():
        raise UserError(
            f"{path} exists outside a run directory; refusing to replace it (nothing was written)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        with guarded_write(path, note=f" (nothing replaced {path.name}/)"):
            yield temp
            fsync_tree(temp)
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            if path.exists():  # the run's own earlier folder: moved out of the way, then removed
                os.rename(path, old / path.name)
            os.rename(temp, path)
            shutil.rmtree(old, ignore_errors=True)
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def write_model_info(model_dir: Path, info: dict[str, Any]) -> None:
    """The one metadata file of a trained model (final/tunesmith.json); merged into what is there."""
    path = Path(model_dir) / MODEL_INFO_FILE
    atomic_write_json(path, {**read_model_info(model_dir), **info})


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """final/tunesmith.json, with a previous version's labels.json folded in ({} when neither is there).
    A damaged one is a UserError naming it: what it records (the task, the classifier's labels)
    decides how the model is used, so it is never guessed."""
    model_dir = Path(model_dir)
    info: dict[str, Any] = {}
    for name in (LEGACY_LABELS_FILE, MODEL_INFO_FILE):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if name == LEGACY_LABELS_FILE:  # any model folder may hold a labels.json of its own
                continue
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise UserError(
                f"{path} is damaged ({reason}); it records the model's task, base model and labels: "
                "restore it from a copy, or train the run again"
            ) from None
        if not isinstance(value, dict):
            if name == LEGACY_LABELS_FILE:
                continue
            raise UserError(
                f"{path} is damaged (not a JSON object); restore it from a copy, or train the run again"
            )
        info.update(value)
    return info


def default_run_name(task: str) -> str:
    return f"{task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def plan_run_dir(config: Config, model_path: str | None, resume: bool) -> Path:
    """Where the run goes; refuses unsafe places and runs that would overwrite another run."""
    name = config.run_name or default_run_name(config.task)
    run_dir = Path(config.output_dir).expanduser() / name
    if model_path and os.path.isdir(model_path) and _is_inside(run_dir, Path(model_path)):
        raise UserError(
            f"output_dir: the run directory {run_dir} would be inside the base model directory {model_path}; "
            "choose another output_dir"
        )
    if run_dir.is_symlink():
        raise UserError(f"run directory {run_dir} is a symlink; refusing to write through it")
    if RunDir(run_dir).holds_anything():
        holder = RunLock.holder(run_dir)
        if holder:
            raise UserError(
                f"run directory {run_dir} is in use by {holder}; wait for it to finish (or stop it), "
                "or choose another run_name"
            )
        if not resume:
            raise UserError(
                f"run directory {run_dir} already holds a run; choose another run_name, or pass --resume to continue it"
            )
        if not (run_dir / RUN_MARKER).is_file():
            raise UserError(f"{run_dir} is not a tunesmith run directory; refusing to write into it")
        # A symlink anywhere inside (checkpoints/, final/, eval/ ...) would let the resumed run
        # read or write outside its directory.
        for folder, names, files in os.walk(run_dir):
            for entry in [*names, *files]:
                if os.path.islink(os.path.join(folder, entry)):
                    raise UserError(
                        f"{os.path.join(folder, entry)} is a symlink; a run directory must hold real files "
                        "only. Replace the link with a copy, then resume"
                    )
    return run_dir


def create_run_dir(run_dir: Path, config: Config) -> None:
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write(run.config, config_to_yaml(config))
    if not run.marker.exists():
        atomic_write(run.marker, json.dumps({"task": config.task, "created": datetime.now().isoformat()}))


def json_safe(value: Any) -> Any:
    """Non-finite floats as strings, so every JSON file of a run stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def read_metrics(run_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl in order; unreadable lines (a crash mid-write) are skipped and,
    when `problems` is given, counted there."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records, bad_lines = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad_lines += 1
            continue
        if isinstance(record, dict):
            records.append(record)
    if bad_lines and problems is not None:
        problems.append(f"{METRICS_FILE}: {bad_lines} unreadable line(s) skipped")
    return records


def trim_metrics(run_dir: Path, step: int) -> None:
    """Before a resume from `step`: drop the records of later steps (they are replayed), so
    metrics.jsonl holds each step once. Records without a step (events) are kept."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            continue
        kept.append(line + "\n")
    atomic_write(path, "".join(kept))


def write_json(path: Path, value: Any) -> None:
    atomic_write_json(path, value)


def resolve_trained(model_or_run: str | Path) -> Path:
    """A run directory -> its final/ model; a model directory stays as it is (a name: its path)."""
    path = Path(model_or_run).expanduser()
    final = RunDir(path).final
    if final.is_dir():
        return final
    if path.is_dir():
        return path
    return Path(model_or_run)


def base_model_of(model_or_run: str | Path) -> str | None:
    """The base model a run or adapter was tuned from, as recorded next to it (None when unknown)."""
    target = resolve_trained(model_or_run)
    value = read_model_info(target).get("base_model")
    if value:
        return str(value)
    adapter_config = target / "adapter_config.json"
    if adapter_config.is_file():
        try:
            value = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        except (json.JSONDecodeError, OSError):
            return None
        if value:
            return str(value)
    return None


# Config keys a resume may change: they do not change what the checkpoint means.
HARMLESS_RESUME_CHANGES = (
    "train.max_steps",
    "train.epochs",
    "train.eval_every",
    "train.log_every",
    "train.save_every",
    "train.keep_last",
    "train.predict",
    "prediction",
    "eval.",
    "logging.",
    "data.check",
    "train.num_threads",
    # Not data.max_eval_examples: without data.eval it decides which records are held out,
    # so changing it changes the training rows under the checkpoint.
    "distributed.",  # DCP checkpoints reshard: another strategy or number of processes is fine
)


def check_resume_compatible(run_dir: RunDir, config: Config) -> list[str]:
    """Refuse a resume whose config changed what the checkpoint means; returns the harmless changes."""
    from tunesmith.config import read_yaml

    saved = read_yaml(run_dir.config)
    current = json.loads(json.dumps(config.model_dump(mode="json")))
    differing = _diff_keys(saved, current)
    blocking = [k for k in differing if not k.startswith(HARMLESS_RESUME_CHANGES)]
    if blocking:
        raise UserError(
            f"--resume: the config differs from the run's saved config in {', '.join(blocking)}; these change "
            "what the checkpoint means. Restore them, or start a new run (another run_name)"
        )
    return differing


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    if a != b and not (isinstance(a, str) and a == REDACTED):
        return [prefix.rstrip(".")]
    return []


def read_saved_config(run_dir: RunDir) -> dict[str, Any]:
    """The run's config.yaml as values, without the redacted secrets: a key whose value was
    redacted is left out, so it takes its default (or the environment variable a key names)
    instead of the literal '***'."""
    from tunesmith.config import read_yaml

    if not run_dir.config.is_file():
        return {}
    return _drop_redacted(read_yaml(run_dir.config))


def _drop_redacted(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _drop_redacted(v) for k, v in values.items() if not (isinstance(v, str) and REDACTED in v)}
    if isinstance(values, list):
        return [_drop_redacted(v) for v in values]
    return values
