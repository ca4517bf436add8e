"""Launching runs from the page: the form, its validation, the command line, and the processes.

The form is the config schema (every key with its description and default). What the user
changed against the config they started from (an example or a run's config.yaml) becomes
dotted overrides, so every launch *is* a command line, `tunesmith train BASE key=value ...`,
validated by the same `load_config` as the CLI (the same messages) and run as that very command
in a subprocess. Stop is SIGTERM (the loop writes its checkpoint and exits 130); resume is
`tunesmith train RUN/config.yaml --resume`. The run lock decides who writes a run: the page
refuses a run a process holds, and the subprocess refuses it again if a terminal got there first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from tunesmith.config import Config, load_config, parse_overrides
from tunesmith.errors import UserError
from tunesmith.train.rundir import RunDir, RunLock, default_run_name, plan_run_dir

# Optional sections: given whole, as YAML, not key by key.
WHOLE_SECTIONS = {"replay", "prediction"}
MAX_OUTPUT_LINES = 400
MAX_OUTPUT_BYTES = 64 * 1024


# --------------------------------------------------------------------------------------------
# The schema as form fields


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The section a key opens (a model, or an optional one); a list of models (reward.functions)
    is one YAML value."""
    if get_origin(annotation) in (list, dict, tuple):
        return None
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _kind(annotation: Any) -> tuple[str, list[Any], bool]:
    """(kind, choices, optional): bool, int, float, str, choice (a Literal) or yaml (anything else)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = type(None) in get_args(annotation)
    if optional and len(args) == 1:
        annotation = args[0]
    if str(get_origin(annotation)).endswith("Literal"):
        return "choice", list(get_args(annotation)), optional
    for kind in (bool, int, float, str):
        if annotation is kind:
            return kind.__name__, [], optional
    return "yaml", [], optional


def _leaves() -> list[tuple[str, str, FieldInfo]]:
    """(dotted key, section, field) of every key the form shows, in schema order."""
    leaves: list[tuple[str, str, FieldInfo]] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, info in cls.model_fields.items():
            section = _section_class(info.annotation)
            if section is not None and name not in WHOLE_SECTIONS:
                walk(section, f"{prefix}{name}.")
            else:
                leaves.append((f"{prefix}{name}", prefix.rstrip(".") or "run", info))

    walk(Config, "")
    return leaves


def schema_fields() -> list[dict[str, Any]]:
    """Every config key in schema order: {key, section, kind, choices, optional, default, description}."""
    fields: list[dict[str, Any]] = []
    for key, section, info in _leaves():
        kind, choices, optional = _kind(info.annotation)
        default = info.get_default(call_default_factory=True)
        fields.append(
            {
                "key": key,
                "section": section,
                "kind": kind,
                "choices": choices,
                "optional": optional,
                "default": render(
                    default.model_dump(mode="json") if isinstance(default, BaseModel) else default
                ),
                "description": info.description or "",
            }
        )
    return fields


def render(value: Any) -> str:
    """A value as the text of a form field, and of a `key=value` override: YAML in flow style,
    strings bare (None is the empty field)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _parsed(raw: str) -> Any:
    return parse_overrides([f"x={raw}"])["x"]


def override_text(key: str, raw: str, kind: str) -> str:
    """`key=raw` as a command-line override; a string field whose text YAML would read as something
    else (`123`, `true`, `[a]`) is quoted so it stays the string typed."""
    if kind == "str" and raw != "" and _parsed(raw) != raw:
        return f"{key}={render([raw])[1:-1]}"
    return f"{key}={raw}"


def form_values(config: Config) -> dict[str, str]:
    """Each key's value in `config` as form text."""
    dumped = config.model_dump(mode="json")
    values = {}
    for item in schema_fields():
        node: Any = dumped
        for part in item["key"].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[item["key"]] = render(node)
    return values


# --------------------------------------------------------------------------------------------
# Where a launch starts from, and what it becomes


@dataclass(frozen=True)
class Base:
    """A config a launch starts from: an example file or a run's saved config.yaml."""

    id: str  # example:<file name> or run:<root>/<name>
    path: Path
    label: str


def list_bases(examples: Path | None, roots: list[Path]) -> list[Base]:
    from tunesmith.webui.runs import find_runs

    bases = []
    if examples is not None and examples.is_dir():
        for path in sorted(examples.glob("*.yaml")):
            bases.append(Base(f"example:{path.name}", path, f"example: {path.name}"))
    for ref in find_runs(roots):
        config = RunDir(ref.path).config
        if config.is_file():
            bases.append(Base(f"run:{ref.id}", config, f"run: {ref.id}"))
    return bases


def find_base(base_id: str, examples: Path | None, roots: list[Path]) -> Base:
    for base in list_bases(examples, roots):
        if base.id == base_id:
            return base
    raise UserError(f"no config {base_id!r} to start from; choose an example or a run")


def shown_path(path: Path) -> str:
    """A path as the command line shows it: relative to the folder the app runs in when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class Plan:
    """A launch: the base config, the overrides, the resolved config and the command line."""

    base: Path
    overrides: list[str]
    config: Config
    run_dir: Path

    @property
    def argv(self) -> list[str]:
        return ["train", shown_path(self.base), *self.overrides]

    @property
    def command(self) -> str:
        return shlex.join(["tunesmith", *self.argv])


@functools.cache
def _adapter(key: str) -> TypeAdapter[Any]:
    annotation = next(info.annotation for name, _, info in _leaves() if name == key)
    return TypeAdapter(annotation if annotation is not None else Any)


def _meaning(key: str, kind: str, raw: str) -> Any:
    """What a field's text means to the config: a string as typed; anything else as the CLI reads
    it (YAML), then as the schema takes it (`2e-4` and `0.0002` are one learning rate)."""
    if kind == "str":
        return raw
    value = _parsed(raw)
    try:
        return _adapter(key).dump_python(_adapter(key).validate_python(value), mode="json")
    except ValidationError:
        return value  # invalid: an override, and load_config gives the CLI's message for it


def changed_overrides(base: Path, values: dict[str, str]) -> list[str]:
    """The form's fields that differ from the base config, as `key=value` overrides."""
    start = form_values(load_config(base))
    kinds = {item["key"]: item["kind"] for item in schema_fields()}
    overrides = []
    for key, raw in values.items():
        if key not in kinds:
            raise UserError(f"unknown form field {key!r}")
        if _meaning(key, kinds[key], raw) != _meaning(key, kinds[key], start[key]):
            overrides.append(override_text(key, raw, kinds[key]))
    return overrides


def extra_overrides(text: str) -> list[str]:
    """The free-text overrides box: one `key=value` per line (blank lines and # comments skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def plan_launch(base: Path, overrides: list[str], roots: list[Path], check_run_dir: bool = True) -> Plan:
    """Validate as `tunesmith train BASE OVERRIDES` would (its messages), name the run when the
    config does not, and refuse a run directory the app does not show or that is taken."""
    config = load_config(base, overrides)  # the CLI's own loading: the same errors, word for word
    if config.run_name is None:
        overrides = [*overrides, f"run_name={default_run_name(config.task)}"]
        config = load_config(base, overrides)
    output = Path(config.output_dir).expanduser().resolve()
    if output not in [root.resolve() for root in roots]:
        folders = ", ".join(str(root) for root in roots)
        raise UserError(
            f"output_dir: {config.output_dir} is not a folder this page shows ({folders}); choose one of them"
        )
    run_dir = Path(config.output_dir).expanduser() / str(config.run_name)
    if check_run_dir:
        plan_run_dir(config, None, resume=False)  # the CLI's checks: taken, in use, a symlink
    return Plan(base, overrides, config, run_dir)


# --------------------------------------------------------------------------------------------
# Before starting: the data preview and the doctor's verdict


def preflight(plan: Plan, num_samples: int = 3) -> dict[str, Any]:
    """What `tunesmith data preview` and `tunesmith data check` say about the planned run's data."""
    from tunesmith import api
    from tunesmith.data import doctor
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task

    config = plan.config
    if config.data.train is None:
        raise UserError("data.train: no training data given; name a file, folder or glob")
    samples = api.preview(config, num_samples)
    preview = [
        {
            "source": s["source"],
            "pieces": [[t, bool(trained)] for t, trained in s["pieces"]],
            "label": s["label"],
        }
        for s in samples
    ]
    task = get_task(config.task)
    tokenizer = load_tokenizer(resolve_model_path(config.model.name), config.model)
    result, _ = doctor.run_check(
        config.data.train_sources(),  # every source of a mix, each with its format and fields
        config.data.eval,
        kind=task.record_kind,
        task=config.task,
        tokenizer=tokenizer,
        max_seq_len=config.data.max_seq_len,
        prompt_template=config.reward.prompt_template,
        system_prompt=config.data.system_prompt,
    )
    # `data check` takes one path (a file, folder or glob) for each split: a list shows its first.
    sources = config.data.train_sources()  # a mix is checked through its first source here
    train, held_out = (
        spec if isinstance(spec, str) or spec is None else spec[0]
        for spec in (sources[0].path if sources else None, config.data.eval)
    )
    check_args = ["tunesmith", "data", "check", str(train), *(["--eval", held_out] if held_out else [])]
    check_args += ["--task", config.task, "--model", config.model.name]
    check_args += ["--max-seq-len", str(config.data.max_seq_len)]
    return {
        "preview": preview,
        "check": result.report.to_dict(),
        "commands": [
            shlex.join(["tunesmith", "data", "preview", *plan.argv[1:]]),
            shlex.join(check_args),
        ],
    }


# --------------------------------------------------------------------------------------------
# The processes


@dataclass
class Job:
    """One `tunesmith train` process the app started; its output goes to `log` (a file outside
    the user's folders, so the run outlives the page: no pipe to break when the page stops)."""

    run_dir: Path
    command: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.time)
    stopping: bool = False  # the page sent SIGTERM

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def pending(self) -> str | None:
        """ "stopping" once SIGTERM was sent, "starting" before; None once the process has ended."""
        if not self.alive:
            return None
        return "stopping" if self.stopping else "starting"

    def output(self) -> list[str]:
        """The last lines the process printed."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(max(0, self.log.stat().st_size - MAX_OUTPUT_BYTES))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-MAX_OUTPUT_LINES:]


class Launcher:
    """Starts, stops and resumes `tunesmith train` processes in `cwd` (one job per run directory)."""

    def __init__(self, cwd: Path | None = None):
        self.cwd = Path(cwd or Path.cwd())
        self.jobs: dict[Path, Job] = {}
        self.lock = threading.Lock()
        self.log_dir: Path | None = None

    def job(self, run_dir: Path) -> Job | None:
        return self.jobs.get(Path(run_dir).resolve())

    def processes(self) -> dict[Path, tuple[int | None, str | None]]:
        """Run directory -> (exit code, pending) of the latest process the app started for it."""
        return {path: (job.exit_code, job.pending) for path, job in self.jobs.items()}

    def _spawn(self, run_dir: Path, argv: list[str]) -> Job:
        key = Path(run_dir).resolve()
        with self.lock:
            current = self.jobs.get(key)
            if current is not None and current.alive:
                raise UserError(f"run {run_dir} is already starting or running (pid {current.process.pid})")
            holder = RunLock.holder(key)
            if holder is not None:
                raise UserError(
                    f"run directory {run_dir} is in use by {holder}; wait for it to finish (or stop it)"
                )
            if self.log_dir is None:
                self.log_dir = Path(tempfile.mkdtemp(prefix="tunesmith-ui-"))
            log = self.log_dir / f"{key.name}-{time.strftime('%Y%m%d-%H%M%S')}-{len(self.jobs)}.log"
            with open(log, "wb") as handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", "tunesmith", *argv],
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,  # the page's Ctrl-C does not stop the runs it started
                )
            job = Job(key, shlex.join(["tunesmith", *argv]), process, log)
            self.jobs[key] = job
        return job

    def start(self, plan: Plan) -> Job:
        return self._spawn(plan.run_dir, plan.argv)

    def resume(self, run_dir: Path, overrides: list[str]) -> Job:
        """`tunesmith train RUN/config.yaml --resume [overrides]`, after checking the saved config
        (with the overrides) still names this run directory."""
        run = RunDir(Path(run_dir))
        if not run.config.is_file():
            raise UserError(f"{run.path} has no config.yaml to resume from")
        config = load_config(run.config, overrides)
        named = (Path(config.output_dir).expanduser() / str(config.run_name)).resolve()
        if named != run.path.resolve():
            raise UserError(
                f"--resume: {run.config} names the run directory {named}, not {run.path}; resume it from the "
                f"folder it was started in (cd there, then tunesmith train {run.config} --resume)"
            )
        return self._spawn(run.path, ["train", shown_path(run.config), "--resume", *overrides])

    def stop(self, run_dir: Path) -> str:
        """SIGTERM to the process that runs `run_dir` (the page's own, or a terminal's on this host):
        it finishes its step, writes a checkpoint and exits 130. Returns who was signalled."""
        job = self.job(run_dir)
        if job is not None and job.alive:
            job.stopping = True
            job.process.send_signal(signal.SIGTERM)
            return f"pid {job.process.pid}"
        holder = RunLock.holder(Path(run_dir))
        if holder is None:
            raise UserError(f"run {run_dir} is not running")
        words = holder.split()
        if len(words) != 5 or words[0] != "pid" or not words[1].isdigit():
            raise UserError(f"run {run_dir} is held by {holder}; stop it where it runs")
        if words[4] != socket.gethostname():
            raise UserError(f"run {run_dir} runs on host {words[4]}; stop it there")
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(words[1]), signal.SIGTERM)
        return holder
