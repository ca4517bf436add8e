"""The tunesmith verbs as Python functions. The CLI is a thin shell over these.

from tunesmith import api
result = api.train(api.load_config("examples/instruct_lora.yaml"))
print(api.generate(result.run_dir, "What is the opposite of hot?"))
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Config, config_to_yaml, load_config  # noqa: F401  (re-exported)
from tunesmith.errors import UserError

FINAL_DIR = "final"
MERGED_DIR = "merged"
EVAL_DIR = "eval"
RUN_INFO_FILE = "tunesmith.json"  # in final/: task and base model, for generate/eval/predict


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    merged_dir: Path | None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)


def quiet_libraries() -> None:
    """Keep the console for tunesmith's own output: no per-file progress bars or advice from libraries."""
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", message=r".*fan_in_fan_out.*")


def setup_torch(config: Config) -> str:
    """Threads, seed and device for a run; returns the device."""
    import torch

    from tunesmith.models.load import select_device

    quiet_libraries()
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.train.seed)
    return select_device(config.model.device)


def environment() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    from tunesmith import __version__

    info = {
        "tunesmith": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def train(
    config: Config,
    resume: bool = False,
    merge: bool = False,
    console: Any = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Finetune as the config says; returns where the run went and the before/after metrics."""
    from tunesmith.data.pack import RowSchedule
    from tunesmith.models.adapters import count_parameters
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task
    from tunesmith.train import distributed, rundir
    from tunesmith.train.checkpoint import TrainerState, latest_checkpoint
    from tunesmith.train.fastpath import prepare_for_speed
    from tunesmith.train.loop import LoopSettings, stop_on_signals, train_loop
    from tunesmith.train.optim import build_optimizer, build_scheduler

    started = time.perf_counter()
    task = get_task(config.task)
    device = setup_torch(config)
    # Launched by torchrun: join the job. Rank 0 alone talks to the console and writes the run
    # directory; one process (no torchrun) gets no-op collectives (docs/DISTRIBUTED.md).
    parallel = distributed.setup(config.distributed, device)
    if not parallel.is_main:
        console = None
    distributed.check_batch_size(parallel, config.train.batch_size)
    model_path = resolve_model_path(config.model.name)
    run_dir = rundir.plan_run_dir(config, model_path, resume)
    rundir.check_logging_available(config.logging)

    # Everything that can fail on the user's input happens before anything is written.
    tokenizer = load_tokenizer(model_path, config.model)
    prepared = task.prepare_data(config, tokenizer)
    _say(console, f"[bold]data[/bold]: {_stats_line(prepared.stats)}")
    for warning in prepared.stats.get("warnings", []):
        _say(console, f"[yellow]warning[/yellow]: {warning}")
    findings = preflight(config, prepared, model_path, console)
    model = task.build_model(model_path, config, device, prepared)
    loss_module = task.make_loss(model, config)
    # Chosen once here (fused loss, compiled blocks, static row shapes); the loop is the same.
    loss_module = prepare_for_speed(loss_module, prepared, config, device, tokenizer.pad_token_id)
    trainable, total = count_parameters(model)
    _say(
        console,
        f"[bold]model[/bold]: {model_path} on {device}, {trainable:,} of {total:,} parameters trainable "
        f"({config.adapter.method})",
    )

    schedule = RowSchedule(
        len(prepared.rows),
        config.train.batch_size,
        config.train.gradient_accumulation_steps,
        config.train.seed,
    )
    total_steps = config.train.max_steps or schedule.steps_for_epochs(config.train.epochs)
    state = TrainerState(step=0, total_steps=total_steps)

    checkpoint = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and checkpoint is None and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    if checkpoint is not None:
        check_resume_compatible(run_dir, config, console)
    parallel.barrier()  # every rank has looked at the run directory before rank 0 creates it
    log: Any = _NoLog()
    if parallel.is_main:
        rundir.create_run_dir(run_dir, config)
        _say(console, f"[bold]run[/bold]: {run_dir}")
        rundir.write_json(run_dir / EVAL_DIR / "data_check.json", findings)
        rundir.write_json(run_dir / "environment.json", environment())
        log = rundir.MetricsLogger(
            run_dir,
            tensorboard=config.logging.tensorboard,
            logging=config.logging,
            run_name=run_dir.name,
            config=config,
        )

    try:
        before: dict[str, Any] = {}
        if checkpoint is None and config.eval.before and parallel.is_main:
            # Before sharding: under FSDP every forward of the generations would need all ranks.
            _say(console, "evaluating the base model ...")
            before = _evaluate(task, model, loss_module, prepared, tokenizer, config, device, "before")
            rundir.write_json(run_dir / EVAL_DIR / "before.json", before)
            _say(console, f"before: {_metrics_line(before)}")
        # DDP replicas or FSDP shards over the processes (one process: the loss module as it is).
        # The optimizer comes after: FSDP replaces the parameters with their shards.
        train_module = distributed.parallelize(parallel, loss_module, config.distributed)
        optimizer = build_optimizer(loss_module, config.train, device)
        scheduler = build_scheduler(optimizer, config.train, total_steps)
        if checkpoint is not None:
            # Either checkpoint format, from any number of processes.
            state = distributed.load_checkpoint(checkpoint, parallel, loss_module, optimizer, scheduler)
            state.total_steps = total_steps
            _say(console, f"resuming from {checkpoint} (step {state.step} of {total_steps})")
            before_file = run_dir / EVAL_DIR / "before.json"
            before = json.loads(before_file.read_text()) if before_file.is_file() else {}

        def step_batches(step: int) -> list[dict[str, Any]]:
            # This rank's rows of the global micro-batches: the same rows for any number of processes.
            return [
                prepared.collate([prepared.rows[i] for i in micro])
                for micro in parallel.shard(schedule.rows_for_step(step))
            ]

        def evaluate_during(step: int) -> dict[str, Any]:
            metrics = task.evaluate(
                model, loss_module, prepared, tokenizer, config, device, "during", generate=False
            )
            return {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}

        def save(current: TrainerState) -> Path:
            # One process: the safetensors checkpoint; several: torch.distributed.checkpoint.
            return distributed.save_checkpoint(
                run_dir / "checkpoints", parallel, optimizer, scheduler, current, config.train.keep_last
            )

        settings = LoopSettings(
            total_steps=total_steps,
            device=device,
            max_grad_norm=config.train.max_grad_norm,
            log_every=config.train.log_every,
            eval_every=config.train.eval_every if prepared.eval else 0,
            save_every=config.train.save_every,
            on_nonfinite=config.train.on_nonfinite,
            max_skipped_steps=config.train.max_skipped_steps,
        )
        with stop_on_signals() as stop, _progress(config, total_steps, state.step, console) as advance:

            def on_step_all(step: int, record: dict[str, Any]) -> None:
                advance(step, record)
                if on_step is not None:
                    on_step(step, record)

            state = train_loop(
                train_module,
                optimizer,
                scheduler,
                step_batches,
                settings,
                state,
                log,
                evaluate=evaluate_during if prepared.eval else None,
                save=save,
                stop=stop,
                on_step=on_step_all,
                parallel=parallel,
            )
        save(state)  # the final checkpoint: resuming a finished run is a no-op, not a restart

        # Rank 0 alone writes the final model, evaluates and reports. Under FSDP every rank first
        # helps gather the full weights, which rank 0 loads into an unsharded copy of the model.
        full_state = distributed.gather_full_state(parallel, loss_module)
        if not parallel.is_main:
            seconds = time.perf_counter() - started
            return RunResult(run_dir, run_dir / FINAL_DIR, None, before, {}, state.step, seconds)
        if full_state is not None:
            model = task.build_model(model_path, config, device, prepared)
            loss_module = task.make_loss(model, config)
            distributed.load_full_state(loss_module, full_state)

        final_dir = run_dir / FINAL_DIR
        _write_final(task, model, tokenizer, final_dir, prepared, config, model_path)
        after: dict[str, Any] = {}
        if config.eval.after:
            after = _evaluate(task, model, loss_module, prepared, tokenizer, config, device, "after")
            rundir.write_json(run_dir / EVAL_DIR / "after.json", after)
            _say(console, f"after:  {_metrics_line(after)}")
        merged_dir = None
        if merge:
            merged_dir = run_dir / MERGED_DIR
            merge_adapter(final_dir, merged_dir)
            _say(console, f"merged model: {merged_dir}")
        seconds = time.perf_counter() - started
        rundir.write_json(
            run_dir / rundir.SUMMARY_FILE,
            {
                "task": config.task,
                "base_model": model_path,
                "steps": state.step,
                "seconds": seconds,
                "before": before,
                "after": after,
                "final_dir": str(final_dir),
                "trainable_parameters": trainable,
                "total_parameters": total,
                "data": _jsonable_stats(prepared.stats),
                **peak_memory(device),
            },
        )
        write_report(run_dir, console=None)
        return RunResult(run_dir, final_dir, merged_dir, before, after, state.step, seconds)
    finally:
        log.close()
        parallel.close()


class _NoLog:
    """The metrics logger of ranks other than 0: they compute the same records, rank 0 writes them."""

    def __call__(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def peak_memory(device: str) -> dict[str, int]:
    """Peak resident memory of this process and, on CUDA, the peak memory torch allocated."""
    import sys

    import torch

    try:
        import resource

        # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    except ImportError:  # Windows: no getrusage; the current RSS is the best we have
        import psutil

        peak = {"peak_rss_bytes": int(psutil.Process().memory_info().rss)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        peak["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


def _evaluate(
    task: Any,
    model: Any,
    loss_module: Any,
    prepared: Any,
    tokenizer: Any,
    config: Config,
    device: str,
    phase: str,
) -> dict[str, Any]:
    metrics = task.evaluate(model, loss_module, prepared, tokenizer, config, device, phase)
    if config.eval.forgetting and config.task != "classify":
        metrics["general"] = general_perplexity(loss_module, tokenizer, config, device)
    return metrics


def general_perplexity(loss_module: Any, tokenizer: Any, config: Config, device: str) -> dict[str, float]:
    """The forgetting probe: perplexity on general reference text (the embedded corpus by default)."""
    from tunesmith.data.load import read_text_file
    from tunesmith.data.templates import IGNORE_INDEX
    from tunesmith.data.tokenize import Example
    from tunesmith.evaluate.metrics import lm_metrics
    from tunesmith.models.load import GENERAL_TEXT_PATH

    path = Path(config.data.general_text) if config.data.general_text else GENERAL_TEXT_PATH
    if not path.is_file():
        raise UserError(f"config key `data.general_text`: file {path} not found")
    text, _ = read_text_file(path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.eval.max_general_tokens]
    block = min(config.data.max_seq_len, 512)
    examples = [Example(ids[i : i + block], list(ids[i : i + block])) for i in range(0, len(ids) - 1, block)]
    examples = [e for e in examples if len(e.input_ids) > 1]
    for example in examples:
        example.labels[0] = IGNORE_INDEX
    metrics = lm_metrics(
        loss_module, examples, tokenizer.pad_token_id, block, config.train.batch_size, device, packing=False
    )
    return {"loss": metrics["loss"], "perplexity": metrics["perplexity"], "source": str(path)}


def _write_final(
    task: Any, model: Any, tokenizer: Any, final_dir: Path, prepared: Any, config: Config, model_path: str
) -> None:
    """Save to a temporary folder, then rename: final/ is either complete or absent."""
    temp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    task.save_final(model, tokenizer, temp, prepared, config)
    info = {
        "task": config.task,
        "base_model": model_path,
        "method": config.adapter.method,
        "max_seq_len": config.data.max_seq_len,
    }
    (temp / RUN_INFO_FILE).write_text(json.dumps(info, indent=2))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    temp.rename(final_dir)


def preflight(config: Config, prepared: Any, model_path: str, console: Any) -> dict[str, Any]:
    """The data doctor's checks before training: errors stop the run, warnings are shown and saved."""
    if not config.data.check:
        return {"skipped": True}
    try:
        from tunesmith.data import check
    except ImportError:
        return {"skipped": True, "reason": "data doctor not available"}
    return check.preflight(config, prepared, console)


def check_resume_compatible(run_dir: Path, config: Config, console: Any) -> None:
    """Refuse a resume whose config changed what the checkpoint means; warn on harmless changes."""
    from tunesmith.config import read_yaml

    saved = read_yaml(run_dir / "config.yaml")
    current = json.loads(json.dumps(config.model_dump(mode="json")))
    harmless_prefixes = (
        "train.max_steps",
        "train.epochs",
        "train.eval_every",
        "train.log_every",
        "train.save_every",
        "train.keep_last",
        "eval.",
        "logging.",
        "data.check",
        "train.num_threads",
        # Not data.max_eval_examples: without data.eval it decides which records are held out,
        # so changing it changes the training rows under the checkpoint.
        "distributed.",  # DCP checkpoints reshard: another strategy or number of processes is fine
    )
    differing = _diff_keys(saved, current)
    blocking = [k for k in differing if not k.startswith(harmless_prefixes)]
    if blocking:
        raise UserError(
            f"--resume: the config differs from the run's saved config in {', '.join(blocking)}; these change "
            "what the checkpoint means. Restore them, or start a new run (another run_name)"
        )
    if differing:
        _say(console, f"[yellow]warning[/yellow]: resuming with changed {', '.join(differing)}")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    if a != b and not (isinstance(a, str) and a == "***"):
        return [prefix.rstrip(".")]
    return []


def _jsonable_stats(stats: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return {k: (asdict(v) if is_dataclass(v) else v) for k, v in stats.items()}


def _stats_line(stats: dict[str, Any]) -> str:
    parts = []
    for key in ("train", "eval"):
        value = stats.get(key)
        if value is not None and hasattr(value, "summary"):
            parts.append(f"{key}: {value.summary()}")
    if stats.get("chat_template"):
        parts.append(f"chat template: {stats['chat_template']}")
    if stats.get("skipped_records"):
        parts.append(f"{len(stats['skipped_records'])} bad records skipped")
    return "; ".join(parts)


def _metrics_line(metrics: dict[str, Any]) -> str:
    shown = []
    for key in ("loss", "perplexity", "token_accuracy", "accuracy", "macro_f1"):
        if isinstance(metrics.get(key), (int, float)):
            shown.append(f"{key} {metrics[key]:.4f}")
    if isinstance(metrics.get("general"), dict):
        shown.append(f"general perplexity {metrics['general']['perplexity']:.2f}")
    return ", ".join(shown) or "(no held-out data)"


class _progress:
    """A rich progress bar with loss, tokens/s and ETA (or nothing when turned off)."""

    def __init__(self, config: Config, total: int, start: int, console: Any):
        self.enabled = config.logging.progress and console is not None
        self.total, self.start, self.console = total, start, console

    def __enter__(self) -> Callable[[int, dict[str, Any]], None]:
        if not self.enabled:
            return lambda step, record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.__enter__()
        self.task_id = self.progress.add_task(
            "train", total=self.total, completed=self.start, loss="-", speed="-"
        )

        def advance(step: int, record: dict[str, Any]) -> None:
            fields = {"loss": f"{record['loss']:.4f}"}
            if "tokens_per_second" in record:
                fields["speed"] = f"{record['tokens_per_second']:,.0f}"
            self.progress.update(self.task_id, completed=step, **fields)

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)


# --------------------------------------------------------------------------------------------
# Using a trained model


def resolve_trained(model_or_run: str) -> Path:
    """A run directory -> its merged/ or final/ model; a model directory stays as it is."""
    path = Path(model_or_run).expanduser()
    if (path / FINAL_DIR).is_dir():
        return path / FINAL_DIR
    if path.is_dir():
        return path
    return Path(model_or_run)


def load_for_inference(
    model_or_run: str, device: str = "auto", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) for a run, an adapter directory, a model directory, 'embedded' or a hub id."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import (
        load_causal_lm,
        load_tokenizer,
        resolve_model_path,
        select_device,
        unsafe_pickle_error,
    )

    quiet_libraries()
    device = select_device(device)
    target = resolve_trained(model_or_run)
    adapter_config = target / "adapter_config.json"
    model_config = ModelConfig(name=str(target), trust_remote_code=trust_remote_code)
    if adapter_config.is_file():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base_config = ModelConfig(name=base, trust_remote_code=trust_remote_code)
        model = load_causal_lm(resolve_model_path(base), base_config, device)
        try:
            model = PeftModel.from_pretrained(model, str(target))
        except Exception as exc:
            raise unsafe_pickle_error(target, exc) or UserError(
                f"{target}: not a loadable PEFT adapter ({type(exc).__name__}: {exc})"
            ) from None
        tokenizer = load_tokenizer(str(target), model_config)
    else:
        path = resolve_model_path(str(target) if target.exists() else model_or_run)
        model_config = ModelConfig(name=path, trust_remote_code=trust_remote_code)
        model = load_causal_lm(path, model_config, device)
        tokenizer = load_tokenizer(path, model_config)
    model.eval()
    return model, tokenizer


def generate(
    model_or_run: str,
    prompt: str | list[dict[str, str]],
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    loaded: tuple[Any, Any] | None = None,
) -> str:
    """The assistant's reply to `prompt` (a string or a list of messages), through the chat template."""
    from tunesmith.data.templates import resolve_chat_template
    from tunesmith.evaluate.generation import generate_reply

    model, tokenizer = loaded or load_for_inference(model_or_run)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    template = resolve_chat_template(tokenizer)
    return generate_reply(model, tokenizer, template, messages, max_new_tokens, temperature)


def merge_adapter(adapter_or_run: str | Path, out_dir: str | Path, console: Any = None) -> Path:
    """Merge a LoRA adapter into its base weights, check the merged model predicts what base +
    adapter predicted, and write it with a model card; the result loads with plain transformers."""
    from tunesmith import export

    source = resolve_trained(str(adapter_or_run))
    model, tokenizer = load_for_inference(str(source), device="cpu")
    parity = None
    if hasattr(model, "merge_and_unload"):
        vocab_size = model.get_input_embeddings().weight.shape[0]
        reference = export.probe_logits(model, vocab_size)
        model = model.merge_and_unload()
        parity = export.parity_error(reference, export.probe_logits(model, vocab_size))
        if parity > export.PARITY_TOLERANCE:
            raise RuntimeError(
                f"merged model differs from base + adapter (max |logit difference| {parity:.2e} > "
                f"{export.PARITY_TOLERANCE}); nothing was written"
            )
        _say(console, f"parity check: merged == base + adapter (max |logit difference| {parity:.1e})")
    model.config.use_cache = True
    info_file = source / RUN_INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    run_dir = source.parent if source.name == FINAL_DIR else None
    card = export.model_card(run_dir, info, parity)
    return export.write_directory(model, tokenizer, Path(out_dir), card, [info_file])


def export_gguf(
    model_or_run: str | Path,
    out_dir: str | Path,
    quant: str = "f16",
    llama_cpp: str | Path | None = None,
    console: Any = None,
) -> Any:
    """out_dir/model.gguf (llama.cpp's converter) + an Ollama Modelfile + the model card, checked
    against the merged model before it is kept (see `tunesmith.export_gguf`)."""
    from tunesmith import export_gguf as gguf_export

    return gguf_export.export_gguf(model_or_run, out_dir, quant=quant, llama_cpp=llama_cpp, console=console)


def serve(model_or_run: str, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve a trained model behind an OpenAI-compatible API until interrupted (`tunesmith.serve`)."""
    from tunesmith import serve as server

    server.serve(model_or_run, host=host, port=port, **options)


def predict(
    model_or_run: str,
    data: str,
    out: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    console: Any = None,
) -> dict[str, Any]:
    """Classify every row of `data` with a trained classifier; writes a CSV with text, predicted
    label(s) and one probability column per label. Returns {rows, out, accuracy (if labelled)}."""
    import csv

    from tunesmith.models.load import select_device
    from tunesmith.tasks.classify import load_classifier, predict_rows, read_unlabeled

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    device = select_device(device)
    final_dir = resolve_trained(model_or_run)
    if not final_dir.is_dir():
        raise UserError(f"{model_or_run}: not a run or model directory")
    model, tokenizer, info = load_classifier(final_dir, device)
    records, labelled = read_unlabeled(data, info)
    with _batch_progress(console, len(records), "predict") as advance:
        rows = predict_rows(model, tokenizer, info, records, batch_size, device, on_batch=advance)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".tmp")
    with open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    temp.replace(out)
    result: dict[str, Any] = {"rows": len(rows), "out": str(out)}
    if labelled:
        result["accuracy"] = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    return result


class _batch_progress:
    """A rich progress bar over rows (or nothing without a console)."""

    def __init__(self, console: Any, total: int, title: str):
        self.console, self.total, self.title = console, total, title

    def __enter__(self) -> Callable[[int], None]:
        if self.console is None:
            return lambda count: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{self.title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.__enter__()
        task_id = self.progress.add_task(self.title, total=self.total)
        return lambda count: self.progress.advance(task_id, count)

    def __exit__(self, *exc: Any) -> None:
        if self.console is not None:
            self.progress.__exit__(*exc)


def preview(config: Config, num_samples: int = 3) -> list[dict[str, Any]]:
    """Tokenized samples with each token marked trained or not (for `tunesmith data preview`)."""
    from tunesmith.data.templates import IGNORE_INDEX
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task

    tokenizer = load_tokenizer(resolve_model_path(config.model.name), config.model)
    prepared = get_task(config.task).prepare_data(config, tokenizer)
    samples = []
    # Indexing, not list(): a pretraining corpus's blocks are read from disk only when asked for.
    for example in (prepared.train[i] for i in range(min(num_samples, len(prepared.train)))):
        pieces = []
        if example.labels is not None:
            for token, label in zip(example.input_ids, example.labels, strict=True):
                pieces.append((tokenizer.decode([token]), label != IGNORE_INDEX))
        else:
            pieces.append((tokenizer.decode(example.input_ids), False))
        label = example.label
        label_set = prepared.extra.get("label_set")
        if label_set is not None:  # classify: show label names, not head indices
            hot = label if isinstance(label, list) else None
            label = (
                [n for n, on in zip(label_set.names, hot, strict=True) if on]
                if hot
                else label_set.names[label]
            )
        samples.append({"source": example.source, "pieces": pieces, "label": label})
    return samples


def write_report(run_dir: str | Path, console: Any = None) -> Path | None:
    """Build report.html for a run from the files in its directory (again at any time)."""
    try:
        from tunesmith.report import html
    except ImportError:
        return None
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(
        (run_dir / name).exists() for name in ("tunesmith-run.json", "metrics.jsonl")
    ):
        raise UserError(
            f"{run_dir} is not a tunesmith run directory (no tunesmith-run.json or metrics.jsonl); "
            "pass a folder under runs/"
        )
    path = html.write_report(run_dir)
    _say(console, f"report: {path}")
    return path


def base_model_of(model_or_run: str) -> str | None:
    """The base model a run or adapter was tuned from, as recorded next to it (None when unknown)."""
    target = resolve_trained(model_or_run)
    for name, key in ((RUN_INFO_FILE, "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        path = target / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get(key)
            except (json.JSONDecodeError, OSError):
                continue
            if value:
                return str(value)
    return None


def _load_for_eval(task_module: Any, name: str, config: Config, device: str, prepared: Any) -> Any:
    """The model `name` ready for the task's evaluate: a causal LM, or a classifier with its head."""
    if config.task != "classify":
        model, _ = load_for_inference(name, device=device, trust_remote_code=config.model.trust_remote_code)
        return model
    trained = resolve_trained(name)
    if (trained / "labels.json").is_file():
        return task_module.load_classifier(trained, device)[0]
    import torch

    from tunesmith.models.load import resolve_model_path

    # A base model has no head for these labels: a fresh, seeded one, as training's "before".
    torch.manual_seed(config.train.seed)
    return task_module.build_model(resolve_model_path(name), config, device, prepared)


def evaluate(
    model_or_run: str,
    data: str | list[str],
    task: str | None = None,
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """The task's metrics on `data` for a tuned model and, side by side, its baseline.

    `model_or_run` is a run directory (its final/ model), an adapter or a model directory. The
    baseline defaults to the base model the run recorded. Both models see the same tokenized
    data (the tuned model's tokenizer and chat template, as in training). Results go to
    `out_dir` (default: <run>/eval/<data name>/ for a run) as tuned.json, baseline.json and
    comparison.json; the same dict is returned.
    """
    from tunesmith.config import _deep_merge, build_config, parse_overrides, read_yaml
    from tunesmith.evaluate.compare import compare
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task
    from tunesmith.train import rundir

    path = Path(model_or_run).expanduser()
    run_dir = path if (path / FINAL_DIR).is_dir() else None
    target = resolve_trained(model_or_run)
    values: dict[str, Any] = (
        read_yaml(run_dir / "config.yaml") if run_dir and (run_dir / "config.yaml").is_file() else {}
    )
    info_file = target / RUN_INFO_FILE
    recorded_task = json.loads(info_file.read_text()).get("task") if info_file.is_file() else None
    values["task"] = task or recorded_task or values.get("task") or "instruct"
    values["model"] = {**values.get("model", {}), "name": str(target) if target.exists() else model_or_run}
    # All of `data` is evaluated: it is both sides of the split, so nothing is held out of it.
    values["data"] = {**values.get("data", {}), "train": data, "eval": data, "check": False}
    labels_file = target / "labels.json"  # a classifier: keep its label order, whatever labels `data` holds
    if values["task"] == "classify" and labels_file.is_file():
        values["data"]["labels"] = json.loads(labels_file.read_text())["labels"]
    values.pop("run_name", None)
    if overrides:
        values = _deep_merge(values, parse_overrides(overrides))
    config = build_config(values, source="tunesmith eval")
    baseline = baseline or base_model_of(model_or_run)

    device = setup_torch(config)
    task_module = get_task(config.task)
    tokenizer = load_tokenizer(resolve_model_path(config.model.name), config.model)
    prepared = task_module.prepare_data(config, tokenizer)
    if not prepared.eval:
        raise UserError(f"--data {data}: no usable evaluation examples")

    def measure(name: str, phase: str) -> dict[str, Any]:
        _say(console, f"evaluating {name} ...")
        model = _load_for_eval(task_module, name, config, device, prepared)
        metrics = _evaluate(
            task_module,
            model,
            task_module.make_loss(model, config),
            prepared,
            tokenizer,
            config,
            device,
            phase,
        )
        del model
        return metrics

    tuned = measure(model_or_run, "after")
    base = measure(baseline, "before") if baseline else {}
    if not baseline:
        _say(
            console,
            "[yellow]warning[/yellow]: no base model recorded for this model; pass --baseline MODEL "
            "to compare",
        )
    result = {
        "task": config.task,
        "data": data,
        "tuned_model": str(model_or_run),
        "baseline_model": baseline,
        "tuned": tuned,
        "baseline": base,
        "comparison": compare(base, tuned),
    }
    if out_dir is None and run_dir is not None:
        stem = Path(data[0] if isinstance(data, list) else data).stem or "data"
        out_dir = run_dir / EVAL_DIR / f"eval-{stem}"
    if out_dir is not None:
        out_dir = Path(out_dir)
        rundir.write_json(out_dir / "tuned.json", tuned)
        rundir.write_json(out_dir / "baseline.json", base)
        rundir.write_json(
            out_dir / "comparison.json", {k: v for k, v in result.items() if k not in ("tuned", "baseline")}
        )
        result["out_dir"] = str(out_dir)
    return result


def select(task: str, data: Any, candidates: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Rank candidate base models on the user's data and hardware; see tunesmith.select.select."""
    from tunesmith.select import select as run_select

    return run_select(task, data, candidates, **options)


def demo(output_dir: str = "runs", console: Any = None, max_steps: int | None = None) -> RunResult:
    """Finetune the embedded model on the embedded sample instructions and show before/after."""
    from tunesmith.models.load import ASSETS_DIR

    samples = ASSETS_DIR / "samples"
    config = Config.model_validate(
        {
            "task": "instruct",
            "model": {"name": "embedded", "device": "cpu"},
            "adapter": {"method": "full"},
            "data": {
                "train": str(samples / "instruct.jsonl"),
                "eval": str(samples / "instruct_eval.jsonl"),
                "max_seq_len": 256,
            },
            "train": {
                "learning_rate": 1e-3,
                "max_steps": max_steps or 250,
                "batch_size": 4,
                "eval_every": 40,
                "warmup_ratio": 0.05,
                "log_every": 5,
            },
            "eval": {"num_prompts": 4, "max_new_tokens": 32},
            "output_dir": output_dir,
            "run_name": default_demo_name(output_dir),
        }
    )
    _say(console, "[bold]tunesmith demo[/bold]: instruction finetuning of the embedded model on CPU")
    return train(config, console=console)


def default_demo_name(output_dir: str) -> str:
    base = "demo"
    index = 1
    name = base
    while (Path(output_dir) / name).exists():
        index += 1
        name = f"{base}-{index}"
    return name
