"""Run directories: `runs/<name>/` with config.yaml, metrics.jsonl, checkpoints/, final/, eval/."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.config import Config, config_to_yaml, redact
from tunesmith.errors import UserError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RUN_MARKER = "tunesmith-run.json"


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
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
            raise UserError(
                f"run directory {run_dir} already holds a run; choose another run_name, or pass --resume to continue it"
            )
        if not (run_dir / RUN_MARKER).is_file():
            raise UserError(f"{run_dir} is not a tunesmith run directory; refusing to write into it")
    return run_dir


def create_run_dir(run_dir: Path, config: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config_to_yaml(config), encoding="utf-8")
    marker = run_dir / RUN_MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"task": config.task, "created": datetime.now().isoformat()}))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class MetricsLogger:
    """Appends one JSON object per line to metrics.jsonl (and optional TensorBoard)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.path = run_dir / METRICS_FILE
        self.handle = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                raise UserError(
                    "logging.tensorboard: install the extra with pip install 'tunesmith[tensorboard]'"
                ) from None

    def __call__(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(redact(_json_safe(record))) + "\n")
        self.handle.flush()
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(redact(_json_safe(value)), indent=2, default=str), encoding="utf-8")
    os.replace(temp, path)
