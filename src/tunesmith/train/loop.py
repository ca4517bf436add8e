"""The training loop: one function, read top to bottom.

It receives a loss module (model + loss), an optimizer, a scheduler and a function that gives
the micro-batches of each step. It knows nothing about file formats, tasks or tokenizers.

Each step's record holds the loop's own figures (loss, the step's accuracy under
`LoopSettings.accuracy_key`, lr, grad_norm, num_targets, tokens_per_second) and every scalar the
loss returned under `logged` ({name: (sum, count)}): both summed over the step's micro-batches and
the ranks, then logged as sum / count (tasks/__init__.py describes the loss's output).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import NonFiniteError, TrainingInterrupted
from tunesmith.train.checkpoint import TrainerState
from tunesmith.train.distributed import Parallel
from tunesmith.train.loss import batch_to_device


@dataclass
class LoopSettings:
    total_steps: int
    device: str = "cpu"
    max_grad_norm: float = 1.0
    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 10
    # The step's share of targets predicted right is logged under this key: its unit's name
    # (token_accuracy, example_accuracy, pair_accuracy: the task's step_unit).
    accuracy_key: str = "token_accuracy"


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes the current step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if flag:  # a second signal: the user really wants out now
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (e.g. a notebook worker) signal() raises: no handler there.
        with suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _nonfinite_grads(parameters: list[torch.nn.Parameter]) -> str | None:
    for parameter in parameters:
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            return "gradient"
    return None


def _as_float(norm: torch.Tensor) -> float:
    # Under FSDP the norm is a DTensor of per-shard partial norms; full_tensor() combines them.
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _step_sums(losses: list[torch.Tensor], corrects: list[Any]) -> tuple[float, float]:
    """The step's loss sum and correct count, read from the device once (one copy each).

    Summed on the host in micro-batch order, as Python floats and ints: exactly the numbers a
    per-micro-batch `float()` / `int()` gave, so logged losses keep every bit."""
    loss_values = torch.stack([loss.reshape(()) for loss in losses]).tolist() if losses else []
    tensors = [c for c in corrects if isinstance(c, torch.Tensor)]
    counts = iter(torch.stack([c.reshape(()) for c in tensors]).tolist() if tensors else [])
    step_loss = 0.0
    for value in loss_values:
        step_loss += float(value)
    step_correct: float = 0  # ints; floats once summed over ranks
    for correct in corrects:
        step_correct += int(next(counts) if isinstance(correct, torch.Tensor) else correct)
    return step_loss, step_correct


def _logged_sums(logged: list[dict[str, Any]]) -> dict[str, list[float]]:
    """{name: [sum, count]} of the scalars the loss returned over the step's micro-batches, read from
    the device once (each micro-batch's `logged` is {name: (sum, count)}, tensors or numbers)."""
    flat = [
        (name, i, value) for item in logged for name, pair in item.items() for i, value in enumerate(pair)
    ]
    tensors = [v.detach().reshape(()).float() for _, _, v in flat if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    totals: dict[str, list[float]] = {}
    for name, i, value in flat:
        totals.setdefault(name, [0.0, 0.0])[i] += float(
            next(read) if isinstance(value, torch.Tensor) else value
        )
    return totals


def _logged_over_ranks(totals: dict[str, list[float]], parallel: Parallel) -> dict[str, float]:
    """Each logged scalar's sum over the ranks divided by its count over the ranks (0 for no count)."""
    names = sorted(totals)  # every rank runs the same loss: the same names, in the same order
    summed = parallel.sum_over_ranks([v for name in names for v in totals[name]]) if names else []
    return {
        name: summed[2 * i] / summed[2 * i + 1] if summed[2 * i + 1] else 0.0 for i, name in enumerate(names)
    }


def _rng_devices(device: str) -> list[int]:
    return [torch.cuda.current_device()] if device.startswith("cuda") else []


def train_loop(
    loss_module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step_batches: Callable[[int], list[dict[str, Any]]],
    settings: LoopSettings,
    state: TrainerState,
    log: Callable[[dict[str, Any]], None],
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    save: Callable[[TrainerState], Path] | None = None,
    stop: StopFlag | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    parallel: Parallel | None = None,
) -> TrainerState:
    # Multi-process runs pass their few collectives in (train/distributed.py); one process: no-ops.
    parallel = parallel or Parallel()
    parameters = [p for p in loss_module.parameters() if p.requires_grad]
    # clip_grad_norm_ with an infinite max still returns the norm, which we log and check.
    clip_to = settings.max_grad_norm if settings.max_grad_norm > 0 else math.inf
    loss_module.train()
    window_start, window_tokens = time.perf_counter(), 0

    while state.step < settings.total_steps:
        step = state.step
        micro_batches = step_batches(step)
        # Normalise by the targets of the whole optimizer step, not per micro-batch: a
        # micro-batch with few supervised tokens must not weigh as much as a full one.
        # With several processes each holds a share of the rows: the normaliser is all ranks' targets.
        (step_targets,) = parallel.sum_over_ranks([sum(float(b["num_targets"]) for b in micro_batches)])
        # The micro-batches' loss sums and correct counts stay on the device (no host sync per
        # micro-batch); they are read once per step by _step_sums.
        losses: list[torch.Tensor] = []
        corrects: list[Any] = []
        logged: list[dict[str, Any]] = []  # the loss's own scalars, {name: (sum, count)} per micro-batch
        step_tokens: float = 0
        for index, batch in enumerate(micro_batches):
            # DDP/FSDP: gradients are synchronised once, after the step's last micro-batch.
            with parallel.micro_batch(index, len(micro_batches)):
                batch = batch_to_device(batch, settings.device)
                inputs = {k: v for k, v in batch.items() if k != "num_targets"}
                out = loss_module(**inputs)
                # max(.., 1): a step with zero targets contributes zero gradient, never NaN.
                # gradient_scale undoes DDP/FSDP's averaging over ranks (1 for one process).
                (out["loss_sum"] * parallel.gradient_scale / max(step_targets, 1.0)).backward()
            losses.append(out["loss_sum"].detach())
            corrects.append(out["num_correct"])
            logged.append(out.get("logged") or {})
            step_tokens += int(batch["input_ids"].numel())
            del out  # free the graph's outputs before the next micro-batch
        step_loss, step_correct = _step_sums(losses, corrects)
        # Every rank logs and decides (non-finite, stop) on the same numbers: the sums over ranks.
        step_loss, step_correct, step_tokens = parallel.sum_over_ranks([step_loss, step_correct, step_tokens])
        step_logged = _logged_over_ranks(_logged_sums(logged), parallel)
        window_tokens += int(step_tokens)

        grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(parameters, clip_to))
        loss_value = step_loss / max(step_targets, 1.0)
        problem = None
        if not math.isfinite(loss_value):
            problem = "loss"
        elif not math.isfinite(grad_norm):
            problem = _nonfinite_grads(parameters) or "gradient norm"
        if problem is None:
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1

            record = {
                "step": state.step,
                "loss": loss_value,
                settings.accuracy_key: step_correct / max(step_targets, 1.0),
                "lr": lr,
                "grad_norm": grad_norm,
                "num_targets": int(step_targets),
                **step_logged,
            }
            if state.step % settings.log_every == 0 or state.step == settings.total_steps:
                elapsed = time.perf_counter() - window_start
                record["tokens_per_second"] = window_tokens / elapsed if elapsed > 0 else 0.0
                window_start, window_tokens = time.perf_counter(), 0
                log(record)
            if on_step is not None:
                on_step(state.step, record)
        else:
            # The bad update is never applied: drop the gradients and either stop or skip.
            optimizer.zero_grad(set_to_none=True)
            state.skipped_steps += 1
            log(
                {
                    "step": step + 1,
                    "event": "nonfinite",
                    "what": problem,
                    "loss": loss_value,
                    "grad_norm": grad_norm,
                }
            )
            if settings.on_nonfinite != "skip" or state.skipped_steps > settings.max_skipped_steps:
                hint = (
                    f"more than train.max_skipped_steps={settings.max_skipped_steps} steps skipped; lower "
                    "train.learning_rate or check the data"
                    if settings.on_nonfinite == "skip"
                    else "lower train.learning_rate, or set train.on_nonfinite: skip"
                )
                raise NonFiniteError(
                    f"step {step + 1}: non-finite {problem} (loss={loss_value}, grad_norm={grad_norm}); "
                    f"the step was not applied and no checkpoint with these values was written; {hint}"
                )
            # A skipped step still uses up its rows and its place in the LR schedule, so the
            # data order and the schedule stay those of an uninterrupted run.
            state.step += 1
            scheduler.step()

        if evaluate is not None and settings.eval_every and state.step % settings.eval_every == 0:
            # Evaluation must not draw from the training RNG stream: then resuming (or changing
            # eval_every on resume) replays exactly the same dropout masks.
            with torch.random.fork_rng(devices=_rng_devices(settings.device)):
                metrics = evaluate(state.step)
            log({"step": state.step, **metrics})
            loss_module.train()
        # Checked after the step, never inside it: a signal between micro-batches lets the
        # step finish, so the checkpoint holds a whole step and no half-accumulated gradient.
        stopping = parallel.sum_over_ranks([float(bool(stop))])[0] > 0  # all ranks stop at the same step
        if save is not None and (stopping or (settings.save_every and state.step % settings.save_every == 0)):
            path = save(state)
            if stopping:
                raise TrainingInterrupted(str(path))
    return state
