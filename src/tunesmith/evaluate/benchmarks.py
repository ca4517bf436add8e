"""Standard benchmarks through EleutherAI's lm-evaluation-harness, on the model already in memory.

The harness scores the model tunesmith holds (an adapter stays unmerged) through its `HFLM`
wrapper, with its own task registry and the user's task YAMLs (`include_path`); the same
settings before and after make one fixed protocol. `compare_benchmarks` turns the two results into
rows: base, tuned, the harness's standard errors, and a verdict per row: better or worse only when
the change is beyond NOISE_Z standard errors of the difference, paired over the same examples where
the harness gives per-example scores that make the value (means and perplexities: most tasks), else
from the two standard errors.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import BenchmarkConfig
from tunesmith.errors import UserError
from tunesmith.progress import NoProgress, Progress

NOISE_Z = 1.96  # a change within 1.96 standard errors of the difference is noise (95% two-sided)
INSTALL_HINT = 'pip install "tunesmith[bench]"'


def require_harness() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            f"eval.benchmarks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        )


@contextlib.contextmanager
def quiet_harness() -> Iterator[None]:
    """The harness logs and draws progress bars; library rooms print nothing, so both are held back."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def task_manager(settings: BenchmarkConfig) -> Any:
    """The user's task YAMLs alone when they hold every task named (indexing the harness's registry
    of thousands of YAMLs takes many seconds), else the harness's registry plus them."""
    paths = settings.include_path
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    for path in paths:
        if not Path(path).expanduser().exists():
            raise UserError(f"config key `eval.benchmarks.include_path`: {path} not found; check the path")
    resolved = tuple(str(Path(p).expanduser().resolve()) for p in paths)
    if resolved:
        local = _manager(resolved, False)
        if set(settings.tasks) <= set(local.all_tasks):
            return local
    return _manager(resolved, True)


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], include_defaults: bool) -> Any:
    """One TaskManager per set of folders (kept: before and after use the same one)."""
    from lm_eval.tasks import TaskManager

    with quiet_harness():
        return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


def harness_limit(settings: BenchmarkConfig) -> int | float | None:
    limit = settings.limit
    return int(limit) if limit is not None and limit >= 1 else limit


def load_tasks(settings: BenchmarkConfig, manager: Any) -> dict[str, Any]:
    """{name: harness Task} for every task named (groups expanded); an unknown name is the user's error."""
    from lm_eval.tasks import get_task_dict

    try:
        with quiet_harness():
            nested = get_task_dict(settings.tasks, manager)
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"config key `eval.benchmarks.tasks`: {exc}; name harness tasks (`lm_eval ls tasks`) or put your "
            "task YAMLs in eval.benchmarks.include_path"
        ) from None
    tasks: dict[str, Any] = {}

    def flatten(node: dict[Any, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(value)
            else:
                tasks[getattr(key, "group_name", None) or str(key)] = value

    flatten(nested)
    return tasks


def count_requests(tasks: dict[str, Any], settings: BenchmarkConfig, tokenizer: Any) -> dict[str, Any]:
    """How much the harness will ask of the model: requests by kind, their mean length in tokens (from
    a sample) and the generation length."""
    counts = {"loglikelihood": 0, "generate_until": 0, "loglikelihood_rolling": 0, "max_gen_toks": 0}
    texts: list[str] = []
    with quiet_harness():
        for task in tasks.values():
            if settings.num_fewshot is not None:
                task.set_config(key="num_fewshot", value=settings.num_fewshot)
            task.build_all_requests(limit=harness_limit(settings), rank=0, world_size=1)
            for instance in task.instances:
                counts[instance.request_type] = counts.get(instance.request_type, 0) + 1
            texts += ["".join(str(a) for a in i.args if isinstance(a, str)) for i in task.instances[:32]]
            kwargs = task.config.generation_kwargs or {}
            if task.OUTPUT_TYPE == "generate_until":
                counts["max_gen_toks"] = max(counts["max_gen_toks"], int(kwargs.get("max_gen_toks", 256)))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else [1]
    counts["mean_tokens"] = max(1, round(sum(lengths) / len(lengths)))
    return counts


def estimate_seconds(model: Any, tokenizer: Any, counts: dict[str, Any], batch_size: int) -> float:
    """A quick estimate: one timed forward of a batch of requests' mean length and one timed decoding
    step, scaled by the number of batches (generation: every step up to the longest allowed)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.full(
        (batch_size, min(counts["mean_tokens"], 4096)), tokenizer.eos_token_id or 0, device=device
    )
    with torch.no_grad():
        started = time.perf_counter()
        model(input_ids=ids)
        forward = time.perf_counter() - started
        started = time.perf_counter()
        model(input_ids=ids[:, :1])
        step = time.perf_counter() - started
    scored = math.ceil((counts["loglikelihood"] + counts["loglikelihood_rolling"]) / batch_size)
    generated = math.ceil(counts["generate_until"] / batch_size)
    return (scored + generated) * forward + generated * counts["max_gen_toks"] * step


def run_benchmarks(
    model: Any,
    tokenizer: Any,
    settings: BenchmarkConfig,
    chat_template: str | None = None,
    progress: Progress | None = None,
    label: str = "model",
) -> dict[str, Any]:
    """The harness's results for `model`: per task and metric the value and its standard error, and
    the per-example scores (for the paired verdict). `chat_template`: the run's template, applied to
    every prompt when settings.chat_template is on."""
    require_harness()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    progress = progress or NoProgress()
    manager = task_manager(settings)
    counts = count_requests(load_tasks(settings, manager), settings, tokenizer)
    was_training = model.training
    model.eval()
    estimate = estimate_seconds(model, tokenizer, counts, settings.batch_size)
    progress.message(
        f"benchmarks on the {label}: {', '.join(settings.tasks)}: {counts['loglikelihood']:,} scored continuations, "
        f"{counts['generate_until']:,} generations (up to {counts['max_gen_toks']} tokens); about "
        f"{estimate / 60:.1f} min"
    )
    original_template = getattr(tokenizer, "chat_template", None)
    if settings.chat_template and chat_template:
        tokenizer.chat_template = chat_template
    started = time.perf_counter()
    try:
        with quiet_harness():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
            results = simple_evaluate(
                model=lm,
                tasks=list(settings.tasks),
                num_fewshot=settings.num_fewshot,
                limit=harness_limit(settings),
                task_manager=manager,
                log_samples=True,
                apply_chat_template=settings.chat_template,
            )
    finally:
        tokenizer.chat_template = original_template
        model.train(was_training)
    if results is None:  # pragma: no cover - only ranks other than 0 get None
        return {}
    summary = summarize(results)
    summary["settings"] = settings.model_dump(mode="json")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["estimated_seconds"] = round(estimate, 2)
    return summary


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The harness's result dict as tunesmith keeps it: {tasks: {task: {metric,filter: {value, stderr,
    higher_is_better}}}, samples: {task: {metric,filter: {doc_id: score}}}, settings, versions}."""
    tasks: dict[str, Any] = {}
    for name, values in results.get("results", {}).items():
        better = results.get("higher_is_better", {}).get(name, {})
        metrics = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            metrics[key] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "higher_is_better": bool(better.get(metric, True)),
            }
        tasks[name] = {"metrics": metrics, "num_samples": _num_samples(results, name)}
    samples: dict[str, Any] = {}
    for name, items in (results.get("samples") or {}).items():
        per_metric: dict[str, dict[str, float]] = {}
        for item in items:
            for metric in item.get("metrics", []):
                score = item.get(metric)
                if isinstance(score, (int, float, bool)):
                    key = f"{metric},{item.get('filter', 'none')}"
                    per_metric.setdefault(key, {})[str(item["doc_id"])] = float(score)
        samples[name] = per_metric
    return {
        "tasks": tasks,
        "samples": samples,
        "versions": results.get("versions", {}),
        "harness": _harness_version(),
    }


def _num_samples(results: dict[str, Any], name: str) -> int | None:
    count = (results.get("n-samples") or {}).get(name, {})
    return count.get("effective") if isinstance(count, dict) else None


def _harness_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------------
# Before vs after


def verdict(change: float, stderr: float | None, higher_is_better: bool = True) -> str:
    """better / worse beyond NOISE_Z standard errors of the change, else within noise."""
    if stderr is None or not math.isfinite(stderr):
        return "no standard error"
    if abs(change) <= NOISE_Z * stderr:
        return "within noise"
    return "better" if (change > 0) == higher_is_better else "worse"


def paired_stderr(before: dict[str, float], after: dict[str, float]) -> tuple[float | None, int]:
    """The standard error of the mean per-example difference over the examples both were scored on."""
    common = sorted(set(before) & set(after))
    if len(common) < 2:
        return None, len(common)
    differences = [after[doc] - before[doc] for doc in common]
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    return math.sqrt(variance / len(differences)), len(common)


def _reproduces(value: float, scores: dict[str, float], perplexity: bool = False) -> bool:
    """Whether the per-example scores make the value: their mean, or exp(-mean) for a perplexity."""
    if not scores:
        return False
    mean = sum(scores.values()) / len(scores)
    return math.isclose(math.exp(-mean) if perplexity else mean, value, rel_tol=1e-6, abs_tol=1e-9)


def paired_change_stderr(
    before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]]
) -> tuple[float | None, int]:
    """The standard error of the change (value, per-example scores on each side), paired over the
    examples both were scored on, on the metric's own scale. Pairing needs to know how the per-example
    scores make the value: a mean (accuracy, exact match) pairs the differences directly; a perplexity
    (the harness keeps each example's log-likelihood, the value is exp(-mean)) pairs the log-likelihood
    differences and carries their error to the perplexity by the delta method (d ppl = -ppl d mean).
    Any other aggregate (corpus BLEU, F1 over the whole set) returns None: the caller falls back to the
    harness's own standard errors, unpaired."""
    (before_value, before_scores), (after_value, after_scores) = before, after
    stderr, count = paired_stderr(before_scores, after_scores)
    if stderr is None:
        return None, count
    if _reproduces(before_value, before_scores) and _reproduces(after_value, after_scores):
        return stderr, count
    if _reproduces(before_value, before_scores, True) and _reproduces(after_value, after_scores, True):
        return after_value * stderr, count
    return None, count


def compare_benchmarks(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task and metric scored on both sides: base, tuned, change, standard errors, verdict."""
    rows = []
    for task, tuned in (after.get("tasks") or {}).items():
        base = (before.get("tasks") or {}).get(task)
        if not base:
            continue
        for key, after_metric in tuned["metrics"].items():
            before_metric = base["metrics"].get(key)
            if before_metric is None:
                continue
            change = after_metric["value"] - before_metric["value"]
            stderr, num_paired = paired_change_stderr(
                (before_metric["value"], (before.get("samples") or {}).get(task, {}).get(key, {})),
                (after_metric["value"], (after.get("samples") or {}).get(task, {}).get(key, {})),
            )
            paired = stderr is not None
            if stderr is None and before_metric["stderr"] is not None and after_metric["stderr"] is not None:
                stderr = math.hypot(before_metric["stderr"], after_metric["stderr"])
            rows.append(
                {
                    "task": task,
                    "metric": key,
                    "base": before_metric["value"],
                    "base_stderr": before_metric["stderr"],
                    "tuned": after_metric["value"],
                    "tuned_stderr": after_metric["stderr"],
                    "change": change,
                    "change_stderr": stderr,
                    "paired": paired,
                    "num_paired": num_paired if paired else None,
                    "verdict": verdict(change, stderr, after_metric["higher_is_better"]),
                }
            )
    return rows


def benchmark_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One plain line per row (the console, the model card)."""

    def value(x: float, se: float | None) -> str:
        return f"{x:.4f}" + (f" ± {se:.4f}" if se is not None else "")

    return [
        f"{row['task']} {row['metric']}: {value(row['base'], row['base_stderr'])} -> "
        f"{value(row['tuned'], row['tuned_stderr'])} ({row['change']:+.4f}, {row['verdict']})"
        for row in rows
    ]
