"""The runs under the app's output folders, read from their files: nothing here writes.

A run's state comes from its lock and its files, so a run started in a terminal shows the same:
running (a process holds `.tunesmith.lock`), finished (summary.json), stopped (the newest
checkpoint is at the last logged step: SIGTERM's checkpoint), failed (anything else).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.config import read_yaml
from tunesmith.errors import UserError
from tunesmith.report.read import load_run
from tunesmith.train.rundir import RunDir, RunLock

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")  # what config.run_name accepts


@dataclass(frozen=True)
class RunRef:
    """One run directory: `root` is the index of its output folder among the app's folders."""

    root: int
    name: str
    path: Path

    @property
    def id(self) -> str:
        return f"{self.root}/{self.name}"


def find_runs(roots: list[Path]) -> list[RunRef]:
    """Every run directory directly under the output folders (symlinks are never followed)."""
    found = []
    for index, root in enumerate(roots):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_symlink() or not child.is_dir() or not RUN_NAME.fullmatch(child.name):
                continue
            if RunDir(child).is_run() or RunLock.holder(child) is not None:
                found.append(RunRef(index, child.name, child))
    return found


def run_ref(roots: list[Path], root: int, name: str) -> RunRef:
    """The run `name` of output folder `root`; anything that is not a plain run name under it is refused."""
    if not 0 <= root < len(roots) or not RUN_NAME.fullmatch(name):
        raise UserError(f"no run {root}/{name}")
    path = roots[root] / name
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"no run {root}/{name}")
    return RunRef(root, name, path)


def headline(task_name: str | None) -> tuple[str, bool]:
    """The task's headline held-out metric and whether higher is better: what the list shows
    before -> after (the held-out loss for a task this version does not know)."""
    from tunesmith.tasks import task_info, task_names

    if task_name not in task_names():
        return "loss", False
    info = task_info(str(task_name))  # the registry alone: no task code, no torch
    return info.headline, info.headline_metric.higher_is_better


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checkpoint_steps(run: RunDir) -> list[int]:
    from tunesmith.train.checkpoint import list_checkpoints

    try:
        return [step for step, _ in list_checkpoints(run.checkpoints)]
    except UserError:  # a symlinked checkpoints/ folder: none we would resume from
        return []


def step_records(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training records (a step, a loss, no event) in step order, the last one per step."""
    latest = {
        r["step"]: r for r in metrics if isinstance(r.get("step"), int) and "event" not in r and "loss" in r
    }
    return [latest[step] for step in sorted(latest)]


def run_state(run: RunDir, metrics: list[dict[str, Any]], exit_code: int | None = None) -> str:
    """running / finished / stopped / failed, from the lock and the files (`exit_code`: of the
    process the app started for it, when it knows one)."""
    if RunLock.holder(run.path) is not None:
        return "running"
    if run.summary.is_file():
        return "finished"
    # The page's own process: a crash (1) or non-finite stop (3) failed the run; a user error (2)
    # wrote nothing (a refused resume), so the files still say what the run is.
    if any(r.get("event") == "nonfinite" for r in metrics) or exit_code not in (None, 0, 2, 130):
        return "failed"
    checkpoints = _checkpoint_steps(run)
    steps = [r["step"] for r in step_records(metrics)]
    # SIGTERM/SIGINT save a checkpoint at the step the loop stopped on: the last one logged.
    if checkpoints and checkpoints[-1] >= max(steps, default=0):
        return "stopped"
    return "failed"


def _config_values(run: RunDir) -> dict[str, Any]:
    if not run.config.is_file():
        return {}
    try:
        return read_yaml(run.config)
    except UserError:
        return {}


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _time(text: Any, fallback: Path) -> str:
    if isinstance(text, str):
        return text
    try:
        return datetime.fromtimestamp(fallback.stat().st_mtime).isoformat(timespec="seconds")
    except OSError:
        return ""


def _seconds_between(created: Any, updated: Path) -> float | None:
    """From the run's creation to its last metrics line (a run without summary.json's own figure)."""
    try:
        return max(0.0, updated.stat().st_mtime - datetime.fromisoformat(str(created)).timestamp())
    except (OSError, ValueError):
        return None


def _scalar(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(ref: RunRef, exit_code: int | None = None, pending: str | None = None) -> dict[str, Any]:
    """One row of the runs list. `exit_code`, `pending`: of the latest process the app started for
    it (`pending`: "starting" or "stopping" while that process lives without holding the lock)."""
    from tunesmith.train.rundir import read_metrics

    run = RunDir(ref.path)
    metrics = read_metrics(run.path)
    marker = _read_json(run.marker) or {}
    summary = _read_json(run.summary) or {}
    config = _config_values(run)
    task = marker.get("task") or config.get("task")
    metric, higher_is_better = headline(task)
    before = _read_json(run.eval_file("before")) or {}
    after = _read_json(run.eval_file("after")) or {}
    steps = step_records(metrics)
    train, model = _section(config, "train"), _section(config, "model")
    updated = run.metrics if run.metrics.is_file() else run.path
    state = run_state(run, metrics, exit_code)
    return {
        "id": ref.id,
        "root": ref.root,
        "name": ref.name,
        # The page's own process: "stopping" from SIGTERM to its exit, "starting" until it takes the lock.
        "state": pending if pending == "stopping" or (pending and state != "running") else state,
        "holder": RunLock.holder(run.path),
        "task": task,
        "model": summary.get("base_model") or model.get("name"),
        "headline": {
            "metric": metric,
            "higher_is_better": higher_is_better,
            "before": _scalar(before.get(metric)),
            "after": _scalar(after.get(metric)),
        },
        "step": steps[-1]["step"] if steps else 0,
        "max_steps": train.get("max_steps"),
        "loss": _scalar(steps[-1].get("loss")) if steps else None,
        "created": _time(marker.get("created"), run.path),
        "updated": _time(None, updated),
        "seconds": _scalar(summary.get("seconds")) or _seconds_between(marker.get("created"), updated),
        "checkpoints": _checkpoint_steps(run),
        "has_report": run.report.is_file(),
    }


def detail(ref: RunRef, exit_code: int | None = None, pending: str | None = None) -> dict[str, Any]:
    """Everything a run's page shows: its row, curves, data findings, before/after and generations."""
    loaded = load_run(ref.path)
    before, after = loaded["before"] or {}, loaded["after"] or {}
    generations = []
    for index, new in enumerate(after.get("generations") or before.get("generations") or []):
        old = (before.get("generations") or [])[index : index + 1]
        generations.append(
            {
                "prompt": new.get("prompt"),
                "reference": new.get("reference"),
                "before": old[0].get("output") if old else None,
                "after": new.get("output") if after.get("generations") else None,
            }
        )
    return {
        **summarize(ref, exit_code, pending),
        "metrics": loaded["metrics"],
        "before": _scalars(before),
        "after": _scalars(after),
        "generations": generations,
        "data_check": loaded["data_check"],
        "config": loaded["config"],
        "problems": loaded["problems"],
    }


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of an eval file, nested ones as dotted keys (general.perplexity)."""
    found: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            found.update(_scalars(value, f"{prefix}{key}."))
        elif _scalar(value) is not None:
            found[f"{prefix}{key}"] = float(value)
    return found


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists and scalars are leaves)."""
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare(
    refs: list[RunRef], processes: dict[Path, tuple[int | None, str | None]] | None = None
) -> dict[str, Any]:
    """Two or more runs side by side: their curves, the config keys that differ, the metrics
    (`processes`: run directory -> (exit code, pending) of the processes the app started)."""
    if len(refs) < 2:
        raise UserError("choose two or more runs to compare")
    known = processes or {}
    details = [detail(ref, *known.get(ref.path.resolve(), (None, None))) for ref in refs]
    configs = [flatten(_config_values(RunDir(ref.path))) for ref in refs]
    keys = sorted(set().union(*configs))
    differing = [
        {"key": key, "values": [config.get(key) for config in configs]}
        for key in keys
        if len({json.dumps(config.get(key), sort_keys=True) for config in configs}) > 1
    ]
    metric_keys = sorted(set().union(*(set(d["before"]) | set(d["after"]) for d in details)))
    metrics = [
        {
            "key": key,
            "values": [{"before": d["before"].get(key), "after": d["after"].get(key)} for d in details],
        }
        for key in metric_keys
        if not key.startswith(("examples", "generations"))
    ]
    return {
        "runs": [{k: v for k, v in d.items() if k != "config"} for d in details],
        "config_diff": differing,
        "metrics": metrics,
    }
