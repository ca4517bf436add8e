"""`tunesmith data curve`: is my data enough? A learning curve from short runs on nested subsets.

    data_curve(config, fractions=(1/8, 1/4, 1/2), max_minutes=30, out_dir=None, verify=False)

The config's data is prepared once (the same held-out split for every size). Each fraction trains
on the first share of one seeded permutation of the training rows (so the subsets are nested),
for the config's epochs (steps proportional to the subset; with train.max_steps, that many steps
scaled by the fraction), through the recipe's entry point for prepared data (train/run.py
train_prepared), and is scored on the
held-out data with the task's headline metric (eval loss for instruct/pretrain, accuracy for
classify). A saturating power law with a 90% band (select/powerlaw.py) predicts the metric with
all the data, 2x and 4x, and the verdict says whether more data of this kind would help.

Noise: a short run's score moves with which rows it got and with its seed (the head's
initialisation, the data order): stories260k on 500 SST-2 sentences scored 0.584 where 1,000
scored 0.555, two seeds on the same rows agreeing within 0.01. So each size trains `repeats` times,
repeat r with seed `train.seed + r` on its own nested subsets (the permutation seeded the same
way), the fit uses their mean, and the spread of the runs (pooled over the sizes) enters the
errors: a mean's error is
sqrt(eval^2 + spread^2 / repeats), one new run's sqrt(eval^2 + spread^2) (eval: the binomial error
of an accuracy on the held-out set), and never under 1% of the value. The band is for one run on
all the data, which is what `verify` trains (with the config's own seed).

Cost: a steady-state probe (train/probe.py) times a step first; the whole curve's estimate is
stated before any run, and budgets shrink (steps scaled down alike) to fit --max-minutes, or the
curve is refused when even one step per size would not fit. With `verify`, a run on all the data
checks the prediction at 1x against the band. Results: curve.json (atomic), curve.png, curve.html.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.config import Config, build_config
from tunesmith.errors import UserError
from tunesmith.progress import NoProgress, Progress
from tunesmith.select.powerlaw import RELATIVE_NOISE_FLOOR, fit_power_law, verdict
from tunesmith.tasks import PreparedData, Task, get_task
from tunesmith.train.rundir import RunDir, atomic_write_json

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5)
DEFAULT_REPEATS = 2  # runs per size: two seeds are the fewest that show the seed noise
PROBE_SECONDS = 10.0
EVAL_STEP_SHARE = 1 / 3  # a forward pass over a row costs about a third of a training step's


def parse_fractions(text: str) -> list[float]:
    """'0.125,0.25,0.5' or '1/8,1/4,1/2' -> sorted distinct fractions in (0, 1)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "/" in part:
                top, bottom = part.split("/", 1)
                value = float(top) / float(bottom)
            else:
                value = float(part)
        except (ValueError, ZeroDivisionError):
            raise UserError(
                f"--fractions {text!r}: write fractions like 0.125,0.25,0.5 or 1/8,1/4,1/2"
            ) from None
        if not 0 < value < 1:
            raise UserError(f"--fractions: {part} is not between 0 and 1 (all the data is always the target)")
        values.append(value)
    values = sorted(set(values))
    if len(values) < 3:
        raise UserError("--fractions: give at least three sizes (the curve has three parameters)")
    return values


def nested_subsets(num_rows: int, fractions: Sequence[float], seed: int) -> dict[float, list[int]]:
    """For each fraction, the row indices of its subset: prefixes of one seeded permutation."""
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    return {f: sorted(order[: max(1, math.ceil(f * num_rows))]) for f in fractions}


def steps_for(config: Config, num_rows: int, all_rows: int) -> int:
    """The run's steps on `num_rows` rows: the same epochs, or max_steps scaled by the share."""
    from tunesmith.data.pack import RowSchedule

    train = config.train
    if train.max_steps:
        return max(1, round(train.max_steps * num_rows / all_rows))
    schedule = RowSchedule(num_rows, train.batch_size, train.gradient_accumulation_steps, train.seed)
    return schedule.steps_for_epochs(train.epochs)


def plan_budget(
    steps: dict[float, int],
    seconds_per_step: float,
    eval_seconds: float,
    max_seconds: float | None,
    runs: dict[float, int] | None = None,
) -> tuple[dict[float, int], float, float]:
    """(steps per size, estimated seconds, scale applied) for `runs[size]` runs of each size (1 by
    default): shrink every size's steps alike to fit `max_seconds`; refuse when one step per run
    would not fit."""
    runs = runs or {}

    def cost(per_size: dict[float, int]) -> float:
        return sum(runs.get(f, 1) * (s * seconds_per_step + eval_seconds) for f, s in per_size.items())

    estimate = cost(steps)
    if max_seconds is None or estimate <= max_seconds:
        return dict(steps), estimate, 1.0
    num_runs = sum(runs.get(f, 1) for f in steps)
    minimum = num_runs * (seconds_per_step + eval_seconds)
    if minimum > max_seconds:
        raise UserError(
            f"--max-minutes {max_seconds / 60:g}: the curve needs at least ~{minimum / 60:.1f} min "
            f"(one step and one evaluation per run, {num_runs} runs, {seconds_per_step:.2f}s a step); raise "
            "--max-minutes, or give fewer --fractions or --repeats"
        )
    scale = (max_seconds - num_runs * eval_seconds) / (estimate - num_runs * eval_seconds)
    shrunk = {f: max(1, int(s * scale)) for f, s in steps.items()}
    return shrunk, cost(shrunk), scale


def _fraction_config(config: Config, out: Path, name: str, steps: int, seed: int) -> Config:
    values = config.model_dump(mode="python")
    values["train"].update(
        {"max_steps": steps, "eval_every": 0, "save_every": 0, "predict": False, "seed": seed}
    )
    values["eval"].update({"before": False, "after": False, "forgetting": False})
    values["logging"] = {**values["logging"], "progress": False, "tensorboard": False, "wandb": False}
    values["logging"]["mlflow"] = False
    values.update({"output_dir": str(out / "runs"), "run_name": name, "prediction": None})
    return build_config(values, source="tunesmith data curve")


def _standard_error(task: Task, value: float, num_eval: int) -> float | None:
    """A proportion's binomial error (accuracy); None when the metric is not one (the fit decides)."""
    if task.higher_is_better and 0.0 <= value <= 1.0 and num_eval > 0:
        p = min(max(value, 1.0 / num_eval), 1.0 - 1.0 / num_eval) if num_eval > 1 else 0.5
        return math.sqrt(p * (1 - p) / num_eval)
    return None


def point_errors(
    task: Task, points: Sequence[dict[str, Any]], num_eval: int
) -> tuple[list[float] | None, float | None, float | None]:
    """(each point's standard error, one new run's, the seed spread) from the repeated runs' scores
    (module docstring); (None, None, None) when neither an eval error nor a spread is known."""
    evals = [_standard_error(task, p["value"], num_eval) for p in points]
    repeated = [p["runs"] for p in points if len(p["runs"]) > 1]
    spread = None
    if repeated:
        variances = [statistics.variance(runs) for runs in repeated]
        spread = math.sqrt(sum(variances) / len(variances))  # pooled over the sizes
    if spread is None and any(e is None for e in evals):
        return None, None, None
    errors = []
    for point, eval_error in zip(points, evals, strict=True):
        seeds = spread**2 / len(point["runs"]) if spread is not None else 0.0
        error = math.sqrt((eval_error or 0.0) ** 2 + seeds)
        errors.append(max(error, RELATIVE_NOISE_FLOOR * abs(point["value"])))
    largest = max(range(len(points)), key=lambda i: points[i]["rows"])
    one_run = math.sqrt((evals[largest] or 0.0) ** 2 + (spread or 0.0) ** 2)
    return errors, max(one_run, RELATIVE_NOISE_FLOOR * abs(points[largest]["value"])), spread


def train_subset(config: Config, tokenizer: Any, prepared: PreparedData) -> dict[str, Any]:
    """One short run on `prepared` (the recipe's entry point for prepared data); the held-out
    metrics after it."""
    from tunesmith.train.run import train_prepared

    started = time.perf_counter()
    result = train_prepared(config, tokenizer, prepared)
    shutil.rmtree(
        RunDir(result.run_dir).checkpoints, ignore_errors=True
    )  # the curve keeps metrics, not weights
    metrics = result.after
    baseline = metrics.get("majority_baseline")  # classify: what predicting the majority class scores
    headline = get_task(config.task).headline_metric
    return {
        "steps": result.steps,
        "seconds": time.perf_counter() - started,
        "chance": baseline.get(headline) if isinstance(baseline, dict) else None,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "run_dir": str(result.run_dir),
    }


@dataclass
class _Curve:
    """What the steps of one curve share: the task, the data prepared once, the sizes and their rows."""

    config: Config
    task: Task
    out: Path
    device: str
    model_path: str
    tokenizer: Any
    prepared: PreparedData
    sizes: list[float]  # the fractions trained (1.0 too with verify)
    subsets: dict[float, list[int]]
    progress: Progress


def data_curve(
    config: Config,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_minutes: float | None = 30.0,
    out_dir: str | Path | None = None,
    verify: bool = False,
    progress: Progress | None = None,
    repeats: int = DEFAULT_REPEATS,
) -> dict[str, Any]:
    """Fit the learning curve of `config`'s data; see the module docstring. Returns curve.json's content.

    The steps: prepare the data once (_prepare), state and bound the cost (_plan), train each size
    `repeats` times (_train_points), fit and judge (_fit), check against all the data (_verification)."""
    from tunesmith.report.curve import write_curve_report

    if repeats < 1:
        raise UserError(f"--repeats {repeats}: give at least 1 run per size (2 or more show the seed noise)")
    curve = _prepare(config, sorted(set(fractions)), out_dir, verify, progress or NoProgress())
    runs = {
        f: 1 if f == 1.0 else repeats for f in curve.sizes
    }  # the check on all the data is one run, as a user's
    steps, cost = _plan(curve, runs, max_minutes)
    points = _train_points(curve, runs, steps)
    fitted = [p for p in points if p["fraction"] < 1.0]
    fit, words, spread = _fit(curve, fitted)
    result: dict[str, Any] = {
        "task": config.task,
        "metric": curve.task.headline_metric,
        "higher_is_better": curve.task.higher_is_better,
        "model": curve.model_path,
        "device": curve.device,
        "rows": len(curve.prepared.rows),
        "eval_examples": len(curve.prepared.eval),
        "repeats": repeats,
        "seed_spread": spread,  # the standard deviation of one size's score over seeds (pooled)
        "cost": cost,
        "points": points,
        "fit": fit.as_dict(),
        **words,
    }
    if verify:
        result["verification"] = _verification(points, words)
    result["seconds"] = sum(p["seconds"] for p in points)
    atomic_write_json(curve.out / "curve.json", result)
    result["files"] = {k: str(v) for k, v in write_curve_report(curve.out, result, fit).items()}
    result["out_dir"] = str(curve.out)
    atomic_write_json(curve.out / "curve.json", result)
    return result


def _prepare(
    config: Config, fractions: list[float], out_dir: str | Path | None, verify: bool, progress: Progress
) -> _Curve:
    """The output folder, the device, the tokenizer and the data prepared once; the nested subsets."""
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.train.setup import setup_torch

    task = get_task(config.task)
    out = Path(out_dir) if out_dir else Path(config.output_dir) / f"curve-{datetime.now():%Y%m%d-%H%M%S}"
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        raise UserError(f"--out {out}: already holds a curve's runs; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    device = setup_torch(config)
    model_path = resolve_model_path(config.model.name)
    tokenizer = load_tokenizer(model_path, config.model)
    prepared = task.prepare_data(config, tokenizer, progress)
    if not prepared.eval:
        raise UserError("data curve needs held-out data: set data.eval_fraction > 0 or give data.eval")
    all_rows = len(prepared.rows)
    sizes = [*fractions, 1.0] if verify else list(fractions)
    subsets = nested_subsets(all_rows, sizes, config.train.seed)
    if len({len(rows) for rows in subsets.values()}) < len(subsets):
        raise UserError(
            f"data curve: {all_rows} training rows are too few for fractions {fractions} (sizes coincide)"
        )
    return _Curve(config, task, out, device, model_path, tokenizer, prepared, sizes, subsets, progress)


def _plan(
    curve: _Curve, runs: dict[float, int], max_minutes: float | None
) -> tuple[dict[float, int], dict[str, Any]]:
    """Steps per size within --max-minutes, from a steady-state probe; the cost, stated before any run."""
    from tunesmith.train.probe import measure_throughput

    config, prepared = curve.config, curve.prepared
    curve.progress.message("timing a few training steps (steady state) to state the cost ...")
    probe = measure_throughput(
        curve.task, curve.model_path, config, prepared, curve.device, time_budget=PROBE_SECONDS
    )
    rows_per_step = config.train.batch_size * config.train.gradient_accumulation_steps
    eval_seconds = len(prepared.eval) / rows_per_step * probe.seconds_per_step * EVAL_STEP_SHARE
    planned = {f: steps_for(config, len(curve.subsets[f]), len(prepared.rows)) for f in curve.sizes}
    max_seconds = max_minutes * 60 if max_minutes else None
    steps, estimate, scale = plan_budget(planned, probe.seconds_per_step, eval_seconds, max_seconds, runs)
    line = (
        f"cost: ~{estimate / 60:.1f} min for {sum(runs.values())} runs "
        f"({sum(runs[f] * s for f, s in steps.items())} steps at {probe.seconds_per_step:.3f}s a step)"
    )
    if scale < 1 and max_minutes:
        line += f"; every size's steps scaled by {scale:.2f} to fit --max-minutes {max_minutes:g}"
    curve.progress.message(line)
    cost = {
        "estimated_seconds": estimate,
        "seconds_per_step": probe.seconds_per_step,
        "probe": probe.as_dict(),
        "steps_scale": scale,
        "max_minutes": max_minutes,
        "line": line,
    }
    return steps, cost


def _train_points(curve: _Curve, runs: dict[float, int], steps: dict[float, int]) -> list[dict[str, Any]]:
    """Each size trained runs[size] times, repeat r with seed train.seed + r on its own nested subsets."""
    points = []
    all_rows = len(curve.prepared.rows)
    for f in curve.sizes:
        runs_here = []
        for repeat in range(runs[f]):
            seed = curve.config.train.seed + repeat
            # Each repeat draws its own nested subsets: which rows a size gets moves its score as
            # much as the seed does (and repeat 0 is the subsets a single run would use).
            chosen = curve.subsets[f] if repeat == 0 else nested_subsets(all_rows, curve.sizes, seed)[f]
            name = f"fraction-{f:g}" + (f"-seed{seed}" if runs[f] > 1 else "")
            runs_here.append(_train_size(curve, f, chosen, name, steps[f], seed))
        values = [r["value"] for r in runs_here]
        points.append(
            {
                "fraction": f,
                "rows": len(curve.subsets[f]),
                "value": statistics.fmean(values),
                "runs": values,
                "steps": runs_here[0]["steps"],
                "seconds": sum(r["seconds"] for r in runs_here),
                "chance": runs_here[0]["chance"],
                "metrics": runs_here[0]["metrics"] if len(runs_here) == 1 else {},
                "run_dirs": [r["run_dir"] for r in runs_here],
            }
        )
    return points


def _train_size(
    curve: _Curve, f: float, chosen: list[int], name: str, steps: int, seed: int
) -> dict[str, Any]:
    """One short run on the rows `chosen`, scored with the task's headline metric."""
    rows = [curve.prepared.rows[i] for i in chosen]
    subset = dataclasses.replace(curve.prepared, rows=rows)
    curve.progress.message(
        f"training on {f:g} of the data ({len(rows)} rows, {steps} steps, seed {seed}) ..."
    )
    config = _fraction_config(curve.config, curve.out, name, steps, seed)
    trained = train_subset(config, curve.tokenizer, subset)
    metric = curve.task.headline_metric
    value = trained["metrics"].get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"data curve: the run on {f:g} of the data gave no finite {metric}")
    curve.progress.message(f"  {metric} {value:.4f}")
    return {"seed": seed, "value": float(value), **trained}


def _fit(curve: _Curve, fitted: list[dict[str, Any]]) -> tuple[Any, dict[str, Any], float | None]:
    """The power law through the sizes' means with their errors, and the verdict's words."""
    errors, one_run, spread = point_errors(curve.task, fitted, len(curve.prepared.eval))
    fit = fit_power_law(
        [p["rows"] for p in fitted],
        [p["value"] for p in fitted],
        errors=errors,
        higher_is_better=curve.task.higher_is_better,
        measurement_error=one_run,
    )
    chances = [p["chance"] for p in fitted if isinstance(p.get("chance"), (int, float))]
    words = verdict(
        fit, len(curve.prepared.rows), curve.task.headline_metric, chance=max(chances) if chances else None
    )
    return fit, words, spread


def _verification(points: list[dict[str, Any]], words: dict[str, Any]) -> dict[str, Any]:
    """--verify: the run on all the data against the band predicted at 1x."""
    full = next(p for p in points if p["fraction"] == 1.0)
    band = words["predictions"]["1x"]
    return {
        "measured": full["value"],
        "predicted": band["predicted"],
        "low": band["low"],
        "high": band["high"],
        "predictable": words["predictable"],
        # no prediction (points at chance) is no pass: the check asks the curve to predict
        "within_band": words["predictable"] and band["low"] <= full["value"] <= band["high"],
    }
