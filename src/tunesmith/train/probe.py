"""Throughput of real training steps in steady state: what `select`, the pre-flight and `data curve`
time before they predict a run's tokens per second and wall time.

The first steps of a run pay for allocation, kernel selection and warm caches; timing two of them
measures start-up, not training. `steady_state` warms up, then times steps until the relative
standard error of the mean step time is below a target (10%) or a time budget is spent, and says
which rule stopped it. `measure_throughput` runs it on the task's own model, loss, optimizer and
row schedule at the settings the run will use (batch size, accumulation, sequence length, method).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.config import Config
    from tunesmith.tasks import PreparedData, Task

WARMUP_STEPS = 2
MIN_TIMED_STEPS = 5
MAX_TIMED_STEPS = 200
TARGET_RELATIVE_ERROR = 0.10
TIME_BUDGET_SECONDS = 30.0


@dataclass
class ProbeResult:
    seconds_per_step: float  # mean over the timed steps
    tokens_per_second: float  # timed tokens / timed seconds
    timed_steps: int
    warmup_steps: int
    relative_error: float  # standard error of the mean step time / the mean
    stopped_by: str  # "steady" (target reached) | "time budget" | "step cap"
    peak_memory_bytes: int | None = None  # CUDA: the peak torch allocated during the probe

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_standard_error(times: Sequence[float]) -> float:
    """Standard error of the mean of `times` over the mean (inf below two samples)."""
    count = len(times)
    if count < 2:
        return math.inf
    mean = sum(times) / count
    if mean <= 0:
        return math.inf
    variance = sum((t - mean) ** 2 for t in times) / (count - 1)
    return math.sqrt(variance / count) / mean


def steady_state(
    step: Callable[[], int],
    warmup_steps: int = WARMUP_STEPS,
    min_steps: int = MIN_TIMED_STEPS,
    max_steps: int = MAX_TIMED_STEPS,
    target: float = TARGET_RELATIVE_ERROR,
    time_budget: float = TIME_BUDGET_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Time `step()` (which runs one optimizer step and returns the tokens it processed) until the
    mean step time is known to `target` relative standard error, or `time_budget` seconds of timed
    steps, or `max_steps` steps; `min_steps` at least (unless the budget runs out first)."""
    for _ in range(warmup_steps):
        step()
    times: list[float] = []
    tokens = 0
    stopped_by = "step cap"
    while len(times) < max_steps:
        started = clock()
        tokens += int(step())
        times.append(clock() - started)
        if len(times) >= min_steps and relative_standard_error(times) <= target:
            stopped_by = "steady"
            break
        if sum(times) >= time_budget:
            stopped_by = "time budget"
            break
    elapsed = sum(times)
    return ProbeResult(
        seconds_per_step=elapsed / len(times),
        tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
        timed_steps=len(times),
        warmup_steps=warmup_steps,
        relative_error=relative_standard_error(times),
        stopped_by=stopped_by,
    )


def measure_throughput(
    task: Task,
    model_path: str,
    config: Config,
    prepared: PreparedData,
    device: str,
    time_budget: float = TIME_BUDGET_SECONDS,
    target: float = TARGET_RELATIVE_ERROR,
) -> ProbeResult:
    """Steady-state training throughput of `config`'s settings on `prepared`'s rows.

    The model, fast path, attention, compiled blocks, loss, collate (train/build.py), optimizer and
    row order are the run's own; the probe runs under a forked RNG, so a run that follows it draws
    the same numbers as one without it."""
    import torch

    from tunesmith.data.pack import RowSchedule
    from tunesmith.train.build import build_trainable
    from tunesmith.train.loss import batch_to_device
    from tunesmith.train.optim import build_optimizer

    train = config.train
    devices = [torch.cuda.current_device()] if device.startswith("cuda") and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        trainable = build_trainable(task, model_path, config, device, prepared)
        loss_module, collate = trainable.loss_module, trainable.collate
        optimizer = build_optimizer(loss_module, train, device)
        loss_module.train()
        schedule = RowSchedule(
            len(prepared.rows), train.batch_size, train.gradient_accumulation_steps, train.seed
        )
        counter = [0]
        if devices:
            torch.cuda.reset_peak_memory_stats()

        def one_step() -> int:
            micro_batches = [
                collate([prepared.rows[i] for i in micro]) for micro in schedule.rows_for_step(counter[0])
            ]
            counter[0] += 1
            targets = max(sum(float(b["num_targets"]) for b in micro_batches), 1.0)
            tokens = 0
            for batch in micro_batches:
                batch = batch_to_device(batch, device)
                out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
                (out["loss_sum"] / targets).backward()
                tokens += int(batch["input_ids"].numel())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if devices:
                torch.cuda.synchronize()
            return tokens

        result = steady_state(one_step, time_budget=time_budget, target=target)
        if devices:
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    return result
