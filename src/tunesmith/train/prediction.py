"""What a run is predicted to cost, and after it, what it cost: summary.json's `prediction`.

Before the loop (`predict`): peak memory from models/memory.py's estimate for the run's settings;
tokens per second and seconds per step from the prediction `tunesmith select` wrote into the config
(`prediction:`, source "select") when it was made for these settings, else from a short steady-state
probe when `train.predict: true` (source "preflight"), else none. After the loop (`compare`): the
measured figures next to the predicted ones, with their ratio.

    "prediction": {"source": "select" | "preflight" | "estimate",
                   "tokens_per_second": {"predicted": .., "measured": .., "ratio": ..},
                   "peak_memory_bytes": {...}, "wall_seconds": {...}, "notes": [...]}

The predicted wall time is the run's own tokens (padding included, as its batches will hold
them: the task's collate on up to 200 of the run's steps spread over it) divided by the predicted
tokens per second; seconds per step x steps only where no token rate is known. Per step, time
follows the batch's shape: SST-2 batches of 8 sentences pad to very different lengths, and a
probe's few steps on select's sample took 41 ms where the run's steps averaged 55.
Wall seconds are the training loop's steps: the fit phase's wall time less its evaluations
(train.eval_every) and checkpoints, which summary.json gives apart (eval_seconds,
checkpoint_seconds, fit_seconds for the whole phase). Measured tokens per second are the median of
the logged windows after the first (the loop's own figure, padding included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.config import Config
    from tunesmith.tasks import PreparedData, Task


def estimate_run_memory(
    config: Config, model_path: str, device: str, measure_baseline: bool = False
) -> int | None:
    """models/memory.py's estimate of the run's peak training memory (None without a local model
    config: config.json or a GGUF file's metadata). `measure_baseline`: on CPU, measure the process
    footprint in a fresh process (a few seconds) instead of the documented constant."""
    from tunesmith.models.load import model_config_dict
    from tunesmith.models.memory import Setting, estimate_memory, shape_from_config

    model_config = model_config_dict(model_path, config.model)
    if model_config is None:
        return None
    try:
        shape = shape_from_config(model_config)
    except (KeyError, ValueError, TypeError):
        return None
    baseline = None
    if device == "cpu" and measure_baseline:
        from tunesmith.train.memory_probe import measure_cpu_baseline

        baseline = measure_cpu_baseline()
    setting = Setting(
        method=config.adapter.method if config.adapter.method in ("full", "lora", "qlora") else "lora",
        seq_len=config.data.max_seq_len,
        batch_size=config.batch_rows(),  # on-policy: each prompt and its group's answers
        gradient_checkpointing=config.train.gradient_checkpointing,
        lora_rank=config.adapter.r,
        device="cpu" if device == "cpu" else "cuda",
        baseline_bytes=baseline,
    )
    return estimate_memory(shape, setting).total


def select_prediction_applies(config: Config) -> tuple[bool, str]:
    """Whether select's prediction in the config was made for the settings this run trains with."""
    made = config.prediction
    if made is None:
        return False, ""
    wanted = {
        "batch_size": config.train.batch_size,
        "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
        "max_seq_len": config.data.max_seq_len,
        "method": config.adapter.method,
    }
    changed = [k for k, v in wanted.items() if getattr(made, k) is not None and getattr(made, k) != v]
    if changed:
        return False, f"select's prediction was made for other {', '.join(changed)}: not used"
    return True, ""


def predict(
    config: Config,
    task: Task,
    model_path: str,
    prepared: PreparedData,
    device: str,
    total_steps: int,
) -> dict[str, Any]:
    """The predicted figures of this run (see the module docstring); nothing here changes the run."""
    notes: list[str] = []
    memory = estimate_run_memory(config, model_path, device, measure_baseline=config.train.predict)
    source = "estimate"
    seconds_per_step = tokens_per_second = None
    applies, why = select_prediction_applies(config)
    if why:
        notes.append(why)
    made = config.prediction
    if applies and made is not None:
        source = made.source or "select"
        tokens_per_second = made.tokens_per_second
        seconds_per_step = made.seconds_per_step
        memory = made.peak_memory_bytes if made.peak_memory_bytes is not None else memory
        if made.device and made.device != device:
            notes.append(f"throughput measured on {made.device}, this run is on {device}")
    elif config.train.predict:
        from tunesmith.train.probe import measure_throughput

        probe = measure_throughput(task, model_path, config, prepared, device)
        source = "preflight"
        tokens_per_second, seconds_per_step = probe.tokens_per_second, probe.seconds_per_step
        notes.append(
            f"probe: {probe.timed_steps} timed steps after {probe.warmup_steps} warm-up, "
            f"relative error {probe.relative_error:.1%} (stopped by {probe.stopped_by})"
        )
        if probe.peak_memory_bytes is not None:
            notes.append(f"probe peak GPU memory {probe.peak_memory_bytes} bytes")
    wall = seconds_per_step * total_steps if seconds_per_step is not None else None
    if tokens_per_second:
        per_step = planned_tokens_per_step(config, prepared, total_steps)
        if per_step:
            wall = per_step * total_steps / tokens_per_second
    return {
        "source": source,
        "tokens_per_second": tokens_per_second,
        "peak_memory_bytes": memory,
        "wall_seconds": wall,
        "notes": notes,
    }


PLANNED_STEPS_SAMPLED = 200  # steps collated to count the run's tokens (spread over the whole run)


def planned_tokens_per_step(config: Config, prepared: PreparedData, total_steps: int) -> float | None:
    """The mean tokens a step of this run feeds the model (input ids, padding included), from the
    run's own schedule and collate on up to PLANNED_STEPS_SAMPLED steps spread over the run."""
    from tunesmith.data.pack import RowSchedule

    train = config.train
    if total_steps < 1 or not prepared.rows:
        return None
    schedule = RowSchedule(
        len(prepared.rows), train.batch_size, train.gradient_accumulation_steps, train.seed
    )
    steps = sorted({step * total_steps // PLANNED_STEPS_SAMPLED for step in range(PLANNED_STEPS_SAMPLED)})
    tokens = 0
    for step in steps:
        for micro in schedule.rows_for_step(step):
            if train.compile:  # static shapes: every micro-batch padded to max_seq_len (train/fastpath.py)
                tokens += len(micro) * config.data.max_seq_len
            else:
                tokens += int(prepared.collate([prepared.rows[i] for i in micro])["input_ids"].numel())
    return tokens / len(steps)


def measured_tokens_per_second(metrics: list[dict[str, Any]]) -> float | None:
    """The median logged tokens/s, the first window (start-up) left out when there are others."""
    speeds = [
        float(r["tokens_per_second"]) for r in metrics if isinstance(r.get("tokens_per_second"), (int, float))
    ]
    if len(speeds) > 1:
        speeds = speeds[1:]
    if not speeds:
        return None
    ordered = sorted(speeds)
    return ordered[len(ordered) // 2]


def compare(predicted: dict[str, Any], measured: dict[str, float | int | None]) -> dict[str, Any]:
    """summary.json's `prediction` block: predicted, measured and measured/predicted per figure."""
    block: dict[str, Any] = {"source": predicted.get("source"), "notes": list(predicted.get("notes", []))}
    for key in ("tokens_per_second", "peak_memory_bytes", "wall_seconds"):
        guess, actual = predicted.get(key), measured.get(key)
        ratio = actual / guess if guess and actual is not None else None
        block[key] = {"predicted": guess, "measured": actual, "ratio": ratio}
    return block


def within(block: dict[str, Any], tolerance: float) -> dict[str, bool | None]:
    """Per figure: is the measured value within `tolerance` (0.3 = 30%) of the predicted one."""
    result: dict[str, bool | None] = {}
    for key in ("tokens_per_second", "peak_memory_bytes", "wall_seconds"):
        ratio = (block.get(key) or {}).get("ratio")
        result[key] = None if ratio is None else abs(ratio - 1.0) <= tolerance
    return result
