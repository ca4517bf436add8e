"""The metrics logger of a run: metrics.jsonl, plus TensorBoard, W&B and MLflow when asked for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunesmith.config import Config, redact
from tunesmith.errors import UserError
from tunesmith.train.rundir import METRICS_FILE, guarded_write, json_safe


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
        line = json.dumps(redact(json_safe(record))) + "\n"
        with guarded_write(self.path, len(line)):
            self.handle.write(line)
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
