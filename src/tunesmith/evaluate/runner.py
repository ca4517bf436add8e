"""Evaluating models: one phase of a run (the task's metrics + the forgetting probe), and
`tunesmith eval` (a tuned model and its baseline on the same data, side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import BenchmarkConfig, Config
from tunesmith.errors import UserError
from tunesmith.progress import NoProgress, Progress
from tunesmith.tasks import EvalContext, Phase, Task, get_task


def evaluate_phase(
    task: Task, ctx: EvalContext, phase: Phase, progress: Progress | None = None
) -> dict[str, Any]:
    """The task's metrics for one phase ("before", "after"), with the forgetting probe and the
    benchmarks (eval.benchmarks) where they apply: both measure general ability, so LM tasks only."""
    metrics = task.evaluate(ctx, phase)
    if ctx.config.eval.forgetting and task.has_forgetting_probe:
        metrics["general"] = general_perplexity(ctx.loss, ctx.tokenizer, ctx.config, ctx.device)
    if ctx.config.eval.benchmarks.tasks and task.has_forgetting_probe:
        from tunesmith.evaluate.benchmarks import run_benchmarks

        template = ctx.prepared.template.template if ctx.prepared.template is not None else None
        label = "base model" if phase == "before" else "tuned model"
        metrics["benchmarks"] = run_benchmarks(
            ctx.model, ctx.tokenizer, ctx.config.eval.benchmarks, template, progress, label
        )
    return metrics


def general_perplexity(loss_module: Any, tokenizer: Any, config: Config, device: str) -> dict[str, Any]:
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
        assert example.labels is not None
        example.labels[0] = IGNORE_INDEX
    metrics = lm_metrics(
        loss_module, examples, tokenizer.pad_token_id, block, config.train.batch_size, device, packing=False
    )
    return {"loss": metrics["loss"], "perplexity": metrics["perplexity"], "source": str(path)}


def eval_config(
    model_or_run: str, data: str | list[str], task: str | None, overrides: list[str] | None
) -> Config:
    """The config `tunesmith eval` measures with: the run's saved config (secrets left out, never
    the redacted '***'), the trained model, and `data` as both splits."""
    from tunesmith.config import build_config, deep_merge, parse_overrides
    from tunesmith.train.rundir import RunDir, read_model_info, read_saved_config, resolve_trained

    run = RunDir(Path(model_or_run).expanduser())
    target = resolve_trained(model_or_run)
    values: dict[str, Any] = read_saved_config(run) if run.final.is_dir() else {}
    info = read_model_info(target)
    values["task"] = task or info.get("task") or values.get("task") or "instruct"
    values["model"] = {**values.get("model", {}), "name": str(target) if target.exists() else model_or_run}
    # All of `data` is evaluated: it is both sides of the split, so nothing is held out of it.
    values["data"] = {**values.get("data", {}), "train": data, "eval": data, "check": False}
    # A classifier keeps its label order, whatever labels `data` holds.
    values["data"].update(get_task(values["task"]).trained_data_settings(target))
    values.pop("run_name", None)
    if overrides:
        values = deep_merge(values, parse_overrides(overrides))
    return build_config(values, source="tunesmith eval")


def evaluate_models(
    model_or_run: str,
    data: str | list[str],
    task: str | None = None,
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The task's metrics on `data` for a tuned model and, side by side, its baseline (see api.evaluate).
    A given `out_dir` follows the output-path rule (new, empty or an earlier eval's folder)."""
    from tunesmith.evaluate.compare import compare
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.outputs import claim_output
    from tunesmith.train import rundir
    from tunesmith.train.setup import setup_torch

    progress = progress or NoProgress()
    data_inputs = data if isinstance(data, list) else [data]
    claim = (
        claim_output(
            out_dir,
            "eval",
            inputs=[*data_inputs, model_or_run, baseline],
            overwrite=overwrite,
            inside_run=True,
        )
        if out_dir is not None
        else None
    )
    config = eval_config(model_or_run, data, task, overrides)
    baseline = baseline or rundir.base_model_of(model_or_run)
    device = setup_torch(config)
    task_module = get_task(config.task)
    tokenizer = load_tokenizer(resolve_model_path(config.model.name), config.model)
    prepared = task_module.prepare_data(config, tokenizer)
    if not prepared.eval:
        raise UserError(f"--data {data}: no usable evaluation examples")

    def measure(name: str, phase: Phase) -> dict[str, Any]:
        progress.message(f"evaluating {name} ...")
        model = task_module.load_for_eval(rundir.resolve_trained(name), name, config, device, prepared)
        context = EvalContext(
            model, task_module.make_loss(model, config), prepared, tokenizer, config, device
        )
        metrics = evaluate_phase(task_module, context, phase, progress)
        del model
        return metrics

    tuned = measure(model_or_run, "after")
    base = measure(baseline, "before") if baseline else {}
    if not baseline:
        progress.message(
            "warning: no base model recorded for this model; pass --baseline MODEL to compare", "warning"
        )
    result: dict[str, Any] = {
        "task": config.task,
        "data": data,
        "tuned_model": str(model_or_run),
        "baseline_model": baseline,
        "tuned": tuned,
        "baseline": base,
        "comparison": compare(base, tuned),
    }
    stem = Path(data[0] if isinstance(data, list) else data).stem or "data"
    return _write_results(model_or_run, claim, f"eval-{stem}", result, tuned, base)


def _refuse_symlinks_between(root: Path, target: Path) -> None:
    """eval/ (or a folder below it) that is a symlink would send a run's files outside the run."""
    probe = target
    while probe != root and probe != probe.parent:
        if probe.is_symlink():
            raise UserError(f"{probe} is a symlink; refusing to write evaluation results through it")
        probe = probe.parent


def benchmark_settings(model_or_run: str, options: dict[str, Any]) -> BenchmarkConfig:
    """The run's eval.benchmarks (when `model_or_run` is a run), with the options given over it."""
    from pydantic import ValidationError

    from tunesmith.config import _format_validation_error
    from tunesmith.train.rundir import RunDir, read_saved_config

    run = RunDir(Path(model_or_run).expanduser())
    saved = read_saved_config(run).get("eval", {}).get("benchmarks", {}) if run.final.is_dir() else {}
    values = {**saved, **{k: v for k, v in options.items() if v is not None}}
    if values.get("limit") == "all":  # --limit all: every example, whatever the run's config says
        values["limit"] = None
    try:
        settings = BenchmarkConfig.model_validate(values)
    except ValidationError as exc:
        message = _format_validation_error(exc, "tunesmith bench")
        for key in BenchmarkConfig.model_fields:  # name the option, and the config key it stands for
            message = message.replace(
                f"config key `{key}`", f"--{key.replace('_', '-')} (eval.benchmarks.{key})"
            )
        raise UserError(message) from None
    if not settings.tasks:
        raise UserError("tunesmith bench: name the benchmarks with --tasks (e.g. --tasks arc_easy,hellaswag)")
    return settings


def benchmark_models(
    model_or_run: str,
    options: dict[str, Any],
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The harness's benchmarks for a tuned model and its baseline under one protocol (see api.benchmark).
    A given `out_dir` follows the output-path rule (new, empty or an earlier bench's folder)."""
    from tunesmith.evaluate.benchmarks import compare_benchmarks, require_harness, run_benchmarks
    from tunesmith.models.inference import load_for_inference
    from tunesmith.outputs import claim_output
    from tunesmith.train import rundir

    progress = progress or NoProgress()
    claim = (
        claim_output(out_dir, "bench", inputs=[model_or_run, baseline], overwrite=overwrite, inside_run=True)
        if out_dir is not None
        else None
    )
    settings = benchmark_settings(model_or_run, options)
    require_harness()
    baseline = baseline or rundir.base_model_of(model_or_run)
    model, tokenizer = load_for_inference(rundir.resolve_trained(model_or_run), model_or_run)
    # One protocol for both: the tuned model's tokenizer and chat template (as in training).
    template = getattr(tokenizer, "chat_template", None)
    tuned = run_benchmarks(
        model, tokenizer, settings, template, progress, "tuned model" if baseline else "model"
    )
    del model
    base: dict[str, Any] = {}
    if baseline:
        model, _ = load_for_inference(rundir.resolve_trained(baseline), baseline)
        base = run_benchmarks(model, tokenizer, settings, template, progress, "base model")
        del model
    else:
        progress.message(
            "no base model recorded for this model: its own scores only (--baseline MODEL compares)"
        )
    result: dict[str, Any] = {
        "tuned_model": str(model_or_run),
        "baseline_model": baseline,
        "settings": settings.model_dump(mode="json"),
        "rows": compare_benchmarks(base, tuned),
        "tuned": tuned,
        "baseline": base,
    }
    return _write_results(
        model_or_run, claim, ("benchmarks-" + "-".join(settings.tasks))[:120], result, tuned, base
    )


def _write_results(
    model_or_run: str, claim: Any, default_name: str, result: dict[str, Any], tuned: Any, base: Any
) -> dict[str, Any]:
    """tuned.json, baseline.json and comparison.json: in the claimed --out folder (the output-path
    rule), or by default in the run's own eval/<default_name>/."""
    from tunesmith.outputs import open_output_folder
    from tunesmith.train import rundir

    run = rundir.RunDir(Path(model_or_run).expanduser())
    out_dir: Path | None = None
    if claim is not None:
        if claim.path.resolve().is_relative_to(run.path.resolve()):
            _refuse_symlinks_between(run.path, claim.path)
        out_dir = open_output_folder(claim)
    elif run.final.is_dir():
        out_dir = run.eval_dir / default_name
        _refuse_symlinks_between(run.path, out_dir)
    if out_dir is not None:
        rundir.write_json(out_dir / "tuned.json", tuned)
        rundir.write_json(out_dir / "baseline.json", base)
        rundir.write_json(
            out_dir / "comparison.json", {k: v for k, v in result.items() if k not in ("tuned", "baseline")}
        )
        result["out_dir"] = str(out_dir)
    return result
