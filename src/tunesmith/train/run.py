"""The recipe: how a finetune happens, phase by phase (the loop itself is in train/loop.py).

    run(config)
      start            threads, seed, device, processes; where the run goes
      prepare_data     tokenizer, the task's data, the data doctor (nothing is written yet)
      predict_cost     what the run should cost (train/prediction.py), checked in summary.json
      build_model      base model + adapter/head, its loss, the fast path chosen once
      open_run         the run directory, the metrics log
      evaluate_before  the base model's metrics (eval/before.json)
      fit              optimizer, scheduler, resume, train_loop, the final checkpoint
      save             final/ (a Hugging Face / PEFT directory and its tunesmith.json)
      evaluate_after   the tuned model's metrics (eval/after.json), merged/ if asked
      report           summary.json and report.html

Everything that can fail on the user's input happens before anything is written. Under torchrun
every rank runs the recipe; rank 0 alone writes the run directory and reports progress.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import tasks
from tunesmith.config import Config, config_warnings
from tunesmith.progress import NoProgress, Progress
from tunesmith.tasks import EvalContext, Phase
from tunesmith.train import metrics_log, rundir
from tunesmith.train.rundir import RunDir
from tunesmith.train.setup import environment, peak_memory, setup_torch

if TYPE_CHECKING:
    from tunesmith.tasks import PreparedData, Task
    from tunesmith.train.distributed import Parallel


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    merged_dir: Path | None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    task: str = ""  # the task's name (its declarations: tasks.task_info)


@dataclass
class Run:
    """What the phases of one run share, filled in as they go."""

    config: Config
    task: Task
    device: str
    parallel: Parallel
    model_path: str
    run_dir: RunDir
    progress: Progress
    started: float
    tokenizer: Any = None
    prepared: PreparedData = None  # type: ignore[assignment]  # set by prepare_data
    model: Any = None
    loss_module: Any = None
    collate: Any = None  # rows -> batch: the task's collate as the fast path chose to wrap it
    trainable: int = 0
    total: int = 0
    predicted: dict[str, Any] = field(default_factory=dict)  # train/prediction.py's figures
    train_seconds: float = 0.0  # the fit phase's training steps: its wall time less the two below
    eval_seconds: float = 0.0  # evaluations during the fit phase (train.eval_every)
    checkpoint_seconds: float = 0.0  # checkpoints written during the fit phase
    fit_seconds: float = 0.0  # the fit phase's whole wall time
    lock: Any = None  # the run directory's RunLock, held by rank 0 for the whole run
    resume_step: int | None = None  # the step of the checkpoint resumed from
    allow_data_change: bool = False  # --allow-data-change: resume although a data file changed
    record_data: bool = True  # write data_files.json (a new run, or a resume onto changed data)


def run(
    config: Config,
    resume: bool = False,
    merge: bool = False,
    progress: Progress | None = None,
    resume_from: str | Path | None = None,
    allow_data_change: bool = False,
) -> RunResult:
    """Finetune as the config says; returns where the run went and the before/after metrics.
    `resume_from`: a checkpoint folder of this run to resume from (implies resume);
    `allow_data_change`: resume although a data file differs from the one the run trained on."""
    resume = resume or resume_from is not None
    current = start(config, resume, progress or NoProgress())
    current.allow_data_change = allow_data_change
    try:
        return _run_phases(current, resume, merge, resume_from)
    finally:
        if current.lock is not None:
            current.lock.release()


def train_prepared(
    config: Config, tokenizer: Any, prepared: PreparedData, progress: Progress | None = None
) -> RunResult:
    """Train on data already prepared (what `data curve` runs on its subsets): the recipe's own
    phases less the data doctor, the prediction, the before/after evaluation, final/ and the
    report. `after` holds the held-out metrics at the end (the task's "during" evaluation, as
    training logs it). The run lock is released on every path."""
    current = start(config, False, progress or NoProgress())
    try:
        current.tokenizer, current.prepared = tokenizer, prepared
        build_model(current)
        schedule, total_steps = plan_steps(current)
        log = open_run(current, {"skipped": True, "reason": "the data was prepared by the caller"})
        try:
            state, _ = fit(current, schedule, total_steps, None, log, {})
            metrics = _evaluate_metrics(current, "during") if prepared.eval else {}
        finally:
            log.close()
            current.parallel.close()
    finally:
        if current.lock is not None:
            current.lock.release()
    path = current.run_dir.path
    return RunResult(
        path, current.run_dir.final, None, {}, metrics, state.step, _elapsed(current), config.task
    )


def _run_phases(current: Run, resume: bool, merge: bool, resume_from: str | Path | None) -> RunResult:
    findings = prepare_data(current)
    schedule, total_steps = plan_steps(current)
    predict_cost(current, total_steps)  # before the model: a probe's memory is gone when the run's peaks
    build_model(current)
    checkpoint = find_checkpoint(current, resume, resume_from)
    log = open_run(current, findings)
    try:
        before = evaluate_before(current, checkpoint)
        fit_started = time.perf_counter()
        fit_phase = fit
        if current.task.on_policy:  # a task that samples while it trains: the on-policy recipe's fit
            from tunesmith.train.rl import fit_on_policy

            fit_phase = fit_on_policy
        state, before = fit_phase(current, schedule, total_steps, checkpoint, log, before)
        current.fit_seconds = time.perf_counter() - fit_started
        # What a prediction (seconds per step x steps) is checked against: the steps alone.
        current.train_seconds = current.fit_seconds - current.eval_seconds - current.checkpoint_seconds
        if not gather_final(current):
            # Ranks other than 0 are done once they helped gather the weights.
            return RunResult(
                current.run_dir.path,
                current.run_dir.final,
                None,
                before,
                {},
                state.step,
                _elapsed(current),
                current.config.task,
            )
        save(current)
        after = evaluate_after(current)
        merged_dir = merge_final(current) if merge else None
        report(current, state.step, before, after)
        return RunResult(
            current.run_dir.path,
            current.run_dir.final,
            merged_dir,
            before,
            after,
            state.step,
            _elapsed(current),
            current.config.task,
        )
    finally:
        log.close()
        current.parallel.close()


def start(config: Config, resume: bool, progress: Progress) -> Run:
    """Threads, seed and device; joins a torchrun job; plans (does not create) the run directory."""
    from tunesmith.models import limits
    from tunesmith.models.load import resolve_model_path
    from tunesmith.tasks import get_task
    from tunesmith.train import distributed

    started = time.perf_counter()
    task = get_task(config.task)
    device = setup_torch(config)
    # Launched by torchrun: join the job. Rank 0 alone reports and writes the run directory;
    # one process (no torchrun) gets no-op collectives (docs/DISTRIBUTED.md).
    parallel = distributed.setup(config.distributed, device)
    if not parallel.is_main:
        progress = NoProgress()
    distributed.check_batch_size(parallel, config.train.batch_size)
    model_path = resolve_model_path(config.model.name)
    model_config = limits.model_config_dict(model_path, config)
    limits.check_context_length(model_config, config)
    run_dir = RunDir(rundir.plan_run_dir(config, model_path, resume))
    metrics_log.check_logging_available(config.logging)
    limits.check_memory(model_config, config, device)
    current = Run(config, task, device, parallel, model_path, run_dir, progress, started)
    for warning in config_warnings(config):
        progress.message(f"warning: {warning}", "warning")
    if parallel.is_main:
        # One process per run directory: a second train or --resume on it stops here.
        current.lock = run_dir.lock()
    return current


def prepare_data(current: Run) -> dict[str, Any]:
    """Tokenizer, the task's tokenized data and the data doctor's findings (errors stop here)."""
    from tunesmith.models.load import load_tokenizer

    config, progress = current.config, current.progress
    current.tokenizer = load_tokenizer(current.model_path, config.model)
    current.prepared = current.task.prepare_data(config, current.tokenizer, progress)
    progress.message(f"data: {current.prepared.stats.summary()}")
    for warning in current.prepared.stats.warnings:
        progress.message(f"warning: {warning}", "warning")
    findings = preflight(config, current.prepared, current.task.record_kind)
    for item in findings.get("findings", []):
        if item["severity"] == "warning":
            where = f" (e.g. {', '.join(item['examples'][:2])})" if item["examples"] else ""
            progress.message(f"data warning: {item['title']}: {item['count']}{where}", "warning")
    return findings


def preflight(config: Config, prepared: Any, kind: str) -> dict[str, Any]:
    """The data doctor's checks before training: errors raise, warnings come back in the report."""
    if not config.data.check:
        return {"skipped": True}
    from tunesmith.data import doctor

    return doctor.preflight(config.data, prepared, kind, config.task).to_dict()


def build_model(current: Run) -> None:
    """The model with its adapter or head, and the loss module the loop trains (train/build.py)."""
    from tunesmith.models.adapters import count_parameters
    from tunesmith.train.build import build_trainable

    config = current.config
    trainable = build_trainable(current.task, current.model_path, config, current.device, current.prepared)
    if trainable.fast.attention_note:
        current.progress.message(trainable.fast.attention_note)
    current.model, current.loss_module, current.collate = (
        trainable.model,
        trainable.loss_module,
        trainable.collate,
    )
    current.trainable, current.total = count_parameters(current.model)
    current.progress.message(
        f"model: {current.model_path} on {current.device}, {current.trainable:,} of {current.total:,} "
        f"parameters trainable ({config.adapter.method})"
    )


def plan_steps(current: Run) -> tuple[Any, int]:
    """The seeded order of rows over steps, and how many optimizer steps the run takes."""
    from tunesmith.data.pack import RowSchedule

    train = current.config.train
    schedule = RowSchedule(
        len(current.prepared.rows), train.batch_size, train.gradient_accumulation_steps, train.seed
    )
    return schedule, train.max_steps or schedule.steps_for_epochs(train.epochs)


def predict_cost(current: Run, total_steps: int) -> None:
    """What the run should cost (memory always; tokens/s and wall time from select's prediction or,
    with train.predict, a steady-state probe): checked against the run in summary.json."""
    from tunesmith.train.prediction import predict

    config = current.config
    if config.train.predict and current.parallel.world_size > 1:
        current.progress.message("train.predict: the throughput probe runs in one process only; skipped")
        config = config.model_copy(update={"train": config.train.model_copy(update={"predict": False})})
    if config.train.predict:
        current.progress.message("predicting throughput (a short steady-state probe) ...")
    current.predicted = predict(
        config, current.task, current.model_path, current.prepared, current.device, total_steps
    )
    if config.train.predict:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available() and current.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the run's peak is the run's, not the probe's


def find_checkpoint(current: Run, resume: bool, resume_from: str | Path | None = None) -> Path | None:
    """With --resume: the checkpoint to resume from (train/checkpoint.py resume_point), and its step."""
    from tunesmith.train.checkpoint import resume_point

    if not resume:
        return None

    def warn(text: str) -> None:
        current.progress.message(f"warning: {text}", "warning")

    checkpoint, current.resume_step = resume_point(current.run_dir, current.config, resume_from, warn)
    if checkpoint is not None:  # exact resume needs the same rows: train/datafiles.py
        from tunesmith.train.datafiles import check_on_resume

        current.record_data = check_on_resume(
            current.run_dir.path, current.config, current.allow_data_change, warn
        )
    return checkpoint


def open_run(current: Run, findings: dict[str, Any]) -> Any:
    """Rank 0 creates the run directory and opens the metrics log; other ranks log nowhere."""
    current.parallel.barrier()  # every rank has looked at the run directory before rank 0 creates it
    if not current.parallel.is_main:
        return _NoLog()
    config, run_dir = current.config, current.run_dir
    rundir.create_run_dir(run_dir.path, config)
    if current.resume_step is not None:
        # Steps after the checkpoint are trained again: their old records go, so each step is logged once.
        rundir.trim_metrics(run_dir.path, current.resume_step)
    current.progress.message(f"run: {run_dir.path}")
    if current.record_data:
        from tunesmith.train import datafiles

        datafiles.record(run_dir.path, config)
    rundir.write_json(run_dir.eval_file("data_check"), findings)
    rundir.write_json(run_dir.environment, environment())
    return metrics_log.MetricsLogger(
        run_dir.path,
        tensorboard=config.logging.tensorboard,
        logging=config.logging,
        run_name=run_dir.name,
        config=config,
    )


def evaluate_before(current: Run, checkpoint: Path | None) -> dict[str, Any]:
    """The base model's metrics, unless resuming (then fit reads them back) or turned off."""
    if checkpoint is not None or not current.config.eval.before or not current.parallel.is_main:
        return {}
    # Before sharding: under FSDP every forward of the generations would need all ranks.
    current.progress.message("evaluating the base model ...")
    before = _evaluate(current, "before")
    rundir.write_json(current.run_dir.eval_file("before"), before)
    current.progress.message(f"before: {metrics_line(current.task, before)}")
    return before


def fit(
    current: Run,
    schedule: Any,
    total_steps: int,
    checkpoint: Path | None,
    log: Any,
    before: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Optimizer, scheduler, resume state, the loop, the final checkpoint; returns (state, before)."""
    from tunesmith.train import distributed
    from tunesmith.train.checkpoint import TrainerState
    from tunesmith.train.loop import stop_on_signals, train_loop
    from tunesmith.train.optim import build_optimizer, build_scheduler

    config, parallel, progress = current.config, current.parallel, current.progress
    state = TrainerState(step=0, total_steps=total_steps)
    # DDP replicas or FSDP shards over the processes (one process: the loss module as it is).
    # The optimizer comes after: FSDP replaces the parameters with their shards.
    train_module = distributed.parallelize(parallel, current.loss_module, config.distributed)
    optimizer = build_optimizer(current.loss_module, config.train, current.device)
    scheduler = build_scheduler(optimizer, config.train, total_steps)
    if checkpoint is not None:
        # Either checkpoint format, from any number of processes.
        state = distributed.load_checkpoint(checkpoint, parallel, current.loss_module, optimizer, scheduler)
        state.total_steps = total_steps
        progress.message(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
        before_file = current.run_dir.eval_file("before")
        before = json.loads(before_file.read_text()) if before_file.is_file() else {}
    save_checkpoint = _checkpoint_saver(current, optimizer, scheduler)
    settings = _loop_settings(current, total_steps)
    progress.start(total_steps, state.step, "train")
    try:
        with stop_on_signals() as stop:
            state = train_loop(
                train_module,
                optimizer,
                scheduler,
                _step_batches(current, schedule),
                settings,
                state,
                log,
                evaluate=_evaluator(current) if settings.eval_every else None,
                save=save_checkpoint,
                stop=stop,
                on_step=progress.step,
                parallel=parallel,
            )
    finally:
        progress.close()
    save_checkpoint(state)  # the final checkpoint: resuming a finished run is a no-op, not a restart
    return state, before


def _loop_settings(current: Run, total_steps: int) -> Any:
    from tunesmith.train.loop import LoopSettings

    train = current.config.train
    return LoopSettings(
        total_steps=total_steps,
        device=current.device,
        max_grad_norm=train.max_grad_norm,
        log_every=train.log_every,
        eval_every=train.eval_every if current.prepared.eval else 0,
        save_every=train.save_every,
        on_nonfinite=train.on_nonfinite,
        max_skipped_steps=train.max_skipped_steps,
        accuracy_key=current.task.info.step_accuracy,  # token_accuracy, example_accuracy, pair_accuracy
    )


def _step_batches(current: Run, schedule: Any) -> Any:
    """step -> this rank's micro-batches: its rows of the global micro-batches (the same rows for
    any number of processes)."""
    prepared, parallel = current.prepared, current.parallel

    def step_batches(step: int) -> list[dict[str, Any]]:
        return [
            current.collate([prepared.rows[i] for i in micro])
            for micro in parallel.shard(schedule.rows_for_step(step))
        ]

    return step_batches


def _evaluator(current: Run) -> Any:
    """step -> the held-out metrics during training (numbers only, as eval_*), timed apart from the steps."""

    def evaluate_during(step: int) -> dict[str, Any]:
        started = time.perf_counter()
        metrics = _evaluate_metrics(current, "during")
        current.eval_seconds += time.perf_counter() - started
        return {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}

    return evaluate_during


def _checkpoint_saver(current: Run, optimizer: Any, scheduler: Any) -> Any:
    """state -> the checkpoint written (one process: safetensors; several: torch.distributed.checkpoint)."""
    from tunesmith.train import distributed

    def save_checkpoint(now: Any) -> Path:
        started = time.perf_counter()
        path = distributed.save_checkpoint(
            current.run_dir.checkpoints,
            current.parallel,
            optimizer,
            scheduler,
            now,
            current.config.train.keep_last,
        )
        current.checkpoint_seconds += time.perf_counter() - started
        return path

    return save_checkpoint


def gather_final(current: Run) -> bool:
    """Under FSDP every rank helps gather the full weights, which rank 0 loads into an unsharded
    copy of the model. True on the rank that goes on to save, evaluate and report."""
    from tunesmith.train import distributed

    full_state = distributed.gather_full_state(current.parallel, current.loss_module)
    if not current.parallel.is_main:
        return False
    if full_state is not None:
        from tunesmith.train.build import build_trainable

        # An unsharded copy built as the run's model was, then the gathered weights loaded into it.
        trainable = build_trainable(
            current.task, current.model_path, current.config, current.device, current.prepared
        )
        current.model, current.loss_module = trainable.model, trainable.loss_module
        distributed.load_full_state(current.loss_module, full_state)
    return True


def save(current: Run) -> None:
    """final/: the task's Hugging Face / PEFT directory and its tunesmith.json, complete or absent."""
    config = current.config
    with rundir.atomic_directory(current.run_dir.final) as temp:
        current.task.save_final(current.model, current.tokenizer, temp, current.prepared, config)
        info = {
            "task": config.task,
            "base_model": current.model_path,
            "method": config.adapter.method,
            "max_seq_len": config.data.max_seq_len,
        }
        rundir.write_model_info(temp, info)


def evaluate_after(current: Run) -> dict[str, Any]:
    """The tuned model's metrics on the same held-out data as before (eval/after.json)."""
    if not current.config.eval.after:
        return {}
    after = _evaluate(current, "after")
    rundir.write_json(current.run_dir.eval_file("after"), after)
    current.progress.message(f"after:  {metrics_line(current.task, after)}")
    return after


def merge_final(current: Run) -> Path:
    """merged/: the adapter merged into its base weights (--merge)."""
    from tunesmith.export import merge_into

    merged_dir = current.run_dir.merged
    with rundir.atomic_directory(merged_dir) as temp:  # inside the run: replaced whole, nothing else
        merge_into(current.run_dir.final, temp, current.progress)
    current.progress.message(f"merged model: {merged_dir}")
    return merged_dir


def report(current: Run, steps: int, before: dict[str, Any], after: dict[str, Any]) -> None:
    """summary.json (what the report and `tunesmith export` read) and report.html."""
    from tunesmith.data.mix import count_trained
    from tunesmith.evaluate.benchmarks import compare_benchmarks
    from tunesmith.report.html import write_report
    from tunesmith.train.prediction import compare, measured_tokens_per_second

    run_dir = current.run_dir
    count_trained(plan_steps(current)[0], steps, current.prepared)  # a mix: what each source gave the steps
    peak = peak_memory(current.device)
    measured = {
        "tokens_per_second": measured_tokens_per_second(rundir.read_metrics(run_dir.path)),
        "peak_memory_bytes": peak.get("cuda_max_memory_allocated_bytes", peak["peak_rss_bytes"]),
        "wall_seconds": current.train_seconds,
    }
    rundir.write_json(
        run_dir.summary,
        {
            "task": current.config.task,
            "base_model": current.model_path,
            "steps": steps,
            "seconds": _elapsed(current),
            "before": before,
            "after": after,
            "final_dir": str(run_dir.final),
            "trainable_parameters": current.trainable,
            "total_parameters": current.total,
            "data": current.prepared.stats.as_dict(),
            "train_seconds": current.train_seconds,
            "eval_seconds": current.eval_seconds,
            "checkpoint_seconds": current.checkpoint_seconds,
            "fit_seconds": current.fit_seconds,
            "prediction": compare(current.predicted, measured),
            "benchmarks": compare_benchmarks(before.get("benchmarks") or {}, after.get("benchmarks") or {}),
            **peak,
        },
    )
    write_report(run_dir.path)


# --------------------------------------------------------------------------------------------
# Helpers of the phases


def _context(current: Run) -> EvalContext:
    c = current
    return EvalContext(c.model, c.loss_module, c.prepared, c.tokenizer, c.config, c.device)


def _evaluate(current: Run, phase: Phase) -> dict[str, Any]:
    """A phase's metrics as eval/*.json holds them (the task's and the forgetting probe)."""
    from tunesmith.evaluate.runner import evaluate_phase

    return evaluate_phase(current.task, _context(current), phase, current.progress)


def _evaluate_metrics(current: Run, phase: Phase) -> dict[str, Any]:
    """The task's own held-out metrics (what training logs as eval_*)."""
    return current.task.evaluate(_context(current), phase)


def _elapsed(current: Run) -> float:
    return time.perf_counter() - current.started


class _NoLog:
    """The metrics logger of ranks other than 0: they compute the same records, rank 0 writes them."""

    def __call__(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def metrics_line(task: Task, metrics: dict[str, Any]) -> str:
    """The before/after line: the metrics the task declares (tasks/__init__.py), with the forgetting probe."""
    return tasks.metrics_line(task.info, metrics) or "(no held-out data)"
