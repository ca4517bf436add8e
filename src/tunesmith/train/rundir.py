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
    """Appends one JSON object per line to metrics.jsonl (and optional TensorBoard, W&B, MLflow).

    Every sink gets the same numbers: the numeric values of each record that has a step.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = False,
        logging: Any = None,
        run_name: str | None = None,
        config: Config | None = None,
    ):
        self.path = run_dir / METRICS_FILE
        self.writer = None
        self.wandb_run = None
        self.mlflow = None
        if logging is not None and logging.wandb:
            self.wandb_run = _start_wandb(logging, run_name or run_dir.name, config)
        if logging is not None and logging.mlflow:
            self.mlflow = _start_mlflow(run_name or run_dir.name, config)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                raise UserError(
                    "logging.tensorboard: install the extra with pip install 'tunesmith[tensorboard]'"
                ) from None
        self.handle = open(self.path, "a", encoding="utf-8")

    def __call__(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(redact(_json_safe(record))) + "\n")
        self.handle.flush()
        if "step" not in record:
            return
        scalars = {
            k: v
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, record["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=record["step"])
        if self.mlflow is not None:
            self.mlflow.log_metrics(
                {k: float(v) for k, v in scalars.items() if math.isfinite(v)}, step=record["step"]
            )

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


def check_logging_available(logging: Any) -> None:
    """Fail before anything is written when a logging sink the config asks for is not installed."""
    import importlib.util

    for key, module, extra in (
        ("tensorboard", "tensorboard", "tensorboard"),
        ("wandb", "wandb", "wandb"),
        ("mlflow", "mlflow", "mlflow"),
    ):
        if getattr(logging, key) and importlib.util.find_spec(module) is None:
            raise UserError(f"logging.{key}: install the extra with pip install 'tunesmith[{extra}]'")


def _start_wandb(logging: Any, run_name: str, config: Config | None) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb: install the extra with pip install 'tunesmith[wandb]'") from None
    values = redact(config.model_dump(mode="json")) if config is not None else None
    return wandb.init(project=logging.wandb_project or "tunesmith", name=run_name, config=values)


def _start_mlflow(run_name: str, config: Config | None) -> Any:
    try:
        import mlflow
    except ImportError:
        raise UserError("logging.mlflow: install the extra with pip install 'tunesmith[mlflow]'") from None
    mlflow.start_run(run_name=run_name)
    if config is not None:
        flat = _flatten(redact(config.model_dump(mode="json")))
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    return mlflow


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
