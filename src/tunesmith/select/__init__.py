"""Model selection: which base model, measured on the user's own data, fits the task and the hardware.

For each candidate: load it (a candidate that cannot be loaded is reported and skipped), take a
held-out sample of the user's data through the task's own prepare_data, and measure
  - fit, as the task's measure_fit says: the loss on the tokens that would be trained, per
    character of that text (nats/char), so models with different tokenizers compare on the same
    text (classify: the zero-shot accuracy of label likelihoods and the label cross-entropy; reward:
    the held-out reward of one greedy answer per prompt under the user's reward functions);
  - tokens per character of the user's text (tokenizer efficiency: cost);
  - throughput of real training steps in steady state on this machine (train/probe.py), at the
    recommended settings (batch, accumulation, sequence length, method), extrapolated to the data x
    epochs; the figures go into the recommended config's `prediction:` block, which `tunesmith
    train` checks against the run (summary.json's `prediction`);
  - memory of full / LoRA / QLoRA training (models/memory.py) against the given budget.
Ranking: candidates whose recommended method fits the memory (and the time budget) first, by the
task's fit_ranking (tasks/__init__.py); then the rest. The winner gets hyperparameters chosen from the
data size and a ready config, which keeps the user's own settings (`--config`: user_settings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Config, build_config, config_to_yaml, deep_merge
from tunesmith.data.pack import RowSchedule
from tunesmith.errors import UserError
from tunesmith.models.memory import (
    available_memory,
    format_size,
    parse_size,
    shape_from_config,
)
from tunesmith.progress import Progress
from tunesmith.select.recommend import (
    build_recommendation,
    choose_method,
    recommend_hyperparameters,
    recommended_values,
)
from tunesmith.tasks import FitContext, Metric, PreparedData, get_task, task_info
from tunesmith.train.probe import measure_throughput
from tunesmith.train.rundir import atomic_write

DEFAULT_SAMPLE = 64  # held-out examples scored per candidate
PROBE_SECONDS = 20.0  # at most this long timing steady-state steps per candidate (train/probe.py)
RECOMMENDED_BATCH_SIZE = 8


@dataclass
class Candidate:
    name: str
    path: str = ""
    status: str = "ok"  # ok | skipped
    reason: str = ""
    params: int = 0
    context: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # catalogue facts
    fit: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)  # method -> estimate (+ gc variant)
    method: str | None = None  # the recommended method that fits, if any
    gradient_checkpointing: bool = False
    seconds_per_step: float = 0.0
    tokens_per_second: float = 0.0
    estimated_seconds: float = 0.0
    rank: int = 0
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def parse_duration(text: str) -> float:
    """'2h', '90m', '45s', '1.5h' -> seconds."""
    cleaned = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(cleaned[-1:])
    try:
        return float(cleaned[:-1]) * scale if scale else float(cleaned)
    except ValueError:
        raise UserError(f"--time-budget {text!r}: write it like 2h, 90m or 3600s") from None


# --------------------------------------------------------------------------------------------
# Measuring one candidate


@dataclass(frozen=True)
class Request:
    """What every candidate is measured for: the task, the data, where it is measured and for
    which machine, and how much of the data and time each measurement takes."""

    task: str
    data: Any
    device: str  # where the measurement runs (this machine)
    budget: int  # the memory the training machine has (bytes)
    sample: int = DEFAULT_SAMPLE
    max_seq_len: int | None = None
    target_device: str | None = None  # the machine the estimate is for (default: `device`)
    probe_seconds: float = PROBE_SECONDS
    settings: dict[str, Any] = field(default_factory=dict)  # the user's own settings (user_settings)


# What select chooses itself; every other section of a user's config (how the data reads, the task's
# own sections such as reward functions) is kept for the measurement and the recommended config.
SELECT_CHOOSES = ("task", "model", "adapter", "train", "eval", "logging", "distributed", "prediction")
SELECT_CHOOSES_DATA = ("train", "eval", "eval_fraction", "max_eval_examples", "check", "max_seq_len")


def user_settings(config: Config) -> dict[str, Any]:
    """What select keeps of a user's config (`--config`): the keys they set, outside SELECT_CHOOSES."""
    values = config.model_dump(mode="json", exclude_unset=True)
    kept = {
        key: value for key, value in values.items() if key not in (*SELECT_CHOOSES, "output_dir", "run_name")
    }
    data = {key: value for key, value in kept.pop("data", {}).items() if key not in SELECT_CHOOSES_DATA}
    return {**kept, "data": data} if data else kept


def _candidate_config(request: Request, model_path: str, seq_len: int) -> Config:
    chosen = {
        "task": request.task,
        "model": {"name": model_path, "device": request.device},
        "adapter": {"method": "full", "r": 8, "alpha": 16, "dropout": 0.0},
        "data": {
            "train": request.data,
            "max_seq_len": seq_len,
            "eval_fraction": 0.5,  # the held-out sample is max_eval_examples records
            "max_eval_examples": request.sample,
            "check": False,
        },
        "train": {"batch_size": 2, "learning_rate": 1e-4, "seed": 0},
        "logging": {"progress": False},
    }
    return build_config(deep_merge(request.settings, chosen), source="tunesmith select")


def _lengths(prepared: PreparedData) -> list[int]:
    train = prepared.train
    if isinstance(train, list):
        return [len(e.input_ids) for e in train]
    return []


def _num_tokens(prepared: PreparedData) -> int:
    return int(prepared.stats.train.num_tokens or 0)


def measure_candidate(candidate: Candidate, request: Request, progress: Progress | None = None) -> Candidate:
    """Fill in fit, memory and throughput; on a load failure mark it skipped with the reason."""
    try:
        tokenizer, prepared, shape = _measure_fit(candidate, request)
    except UserError as exc:
        candidate.status, candidate.reason = "skipped", str(exc)
        return candidate
    except Exception as exc:  # a broken model directory: report it, rank the rest
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        candidate.status, candidate.reason = "skipped", f"could not be loaded ({type(exc).__name__}: {first})"
        return candidate
    _recommend_settings(candidate, request, prepared, shape)
    _measure_throughput(candidate, request, tokenizer)
    return candidate


def _measure_fit(candidate: Candidate, request: Request) -> tuple[Any, PreparedData, Any]:
    """Load the candidate, take the held-out sample through the task's prepare_data and let the task
    measure the fit; (tokenizer, prepared data, the model's shape)."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_causal_lm, load_tokenizer, model_config_dict, resolve_model_path

    candidate.path = resolve_model_path(candidate.name)
    model_config = model_config_dict(candidate.path, ModelConfig(name=candidate.path))
    if model_config is None:
        raise UserError(
            f"{candidate.name}: not reachable here (no local directory or .gguf file; the model hub is not "
            "used by select)"
        )
    shape = shape_from_config(model_config)
    candidate.context = int(
        model_config.get("max_position_embeddings") or model_config.get("n_positions") or 0
    )
    seq_len = min(x for x in (request.max_seq_len or 512, candidate.context or 512) if x)
    config = _candidate_config(request, candidate.path, seq_len)
    tokenizer = load_tokenizer(candidate.path, config.model)
    task = get_task(request.task)
    prepared = task.prepare_data(config, tokenizer)
    # Every candidate is probed as the plain causal LM it is: the task says how.
    model = load_causal_lm(candidate.path, config.model, request.device)
    candidate.fit = task.measure_fit(
        FitContext(model, prepared, tokenizer, config, request.device, request.sample)
    )
    candidate.params = sum(p.numel() for p in model.parameters())
    return tokenizer, prepared, shape


def _recommend_settings(candidate: Candidate, request: Request, prepared: PreparedData, shape: Any) -> None:
    """The method that fits the memory and the hyperparameters for it (candidate.info)."""
    num_examples = len(prepared.train) + len(prepared.eval)

    def hyperparameters(method: str) -> tuple[dict[str, Any], list[str]]:
        return recommend_hyperparameters(
            request.task,
            num_examples,
            _num_tokens(prepared),
            _lengths(prepared),
            candidate.context,
            candidate.params,
            method,
            request.max_seq_len,
        )

    hyper, _ = hyperparameters("lora")
    method, checkpointing, estimates = choose_method(
        shape,
        candidate.params,
        num_examples,
        hyper["max_seq_len"],
        RECOMMENDED_BATCH_SIZE,
        request.target_device or request.device,
        request.budget,
        four_bit=task_info(request.task).four_bit_base,
    )
    candidate.memory = estimates
    candidate.method, candidate.gradient_checkpointing = method, checkpointing
    hyper, why = hyperparameters(method or "lora")
    candidate.info.update(
        hyperparameters=hyper, reasoning=why, num_examples=num_examples, batch_size=RECOMMENDED_BATCH_SIZE
    )


def _measure_throughput(candidate: Candidate, request: Request, tokenizer: Any) -> None:
    """Steady-state throughput at the recommended settings, on the data as the recommended config
    prepares it; advisory: a failure is a reason, never a lost candidate."""
    device = request.device
    try:
        values = recommended_values(candidate, request.task, request.data, "auto", request.settings)
        values["model"] = {"name": candidate.path, "device": device}
        if values["adapter"]["method"] == "qlora" and device == "cpu":
            values["adapter"]["method"] = "lora"  # 4-bit kernels need the GPU; the closest on CPU
        values["data"]["check"] = False
        values["logging"] = {"progress": False}
        config = build_config(values, source="tunesmith select (throughput probe)")
        task = get_task(request.task)
        prepared = task.prepare_data(config, tokenizer)
        probe = measure_throughput(
            task, candidate.path, config, prepared, device, time_budget=request.probe_seconds
        )
        candidate.info["probe"] = probe.as_dict()
        seconds, tokens_per_second = probe.seconds_per_step, probe.tokens_per_second
        train = config.train
        schedule = RowSchedule(
            len(prepared.rows), train.batch_size, train.gradient_accumulation_steps, train.seed
        )
        candidate.info["steps"] = train.max_steps or schedule.steps_for_epochs(train.epochs)
    except Exception as exc:  # timing is advisory; a failure here must not hide the fit figures
        seconds, tokens_per_second = 0.0, 0.0
        candidate.info["steps"] = 0
        candidate.reasons.append(f"throughput not measured ({type(exc).__name__}: {str(exc)[:120]})")
    candidate.seconds_per_step, candidate.tokens_per_second = seconds, tokens_per_second
    candidate.estimated_seconds = candidate.info["steps"] * seconds
    candidate.info["measured_on"] = device


# --------------------------------------------------------------------------------------------
# Ranking, reasons, recommendation


def rank(candidates: list[Candidate], time_budget: float | None, task: str) -> list[Candidate]:
    """Candidates that fit the memory (and time budget) first, then by the task's fit_ranking."""
    measured = [c for c in candidates if c.status == "ok"]
    ranking = task_info(task).fit_ranking

    def key(c: Candidate) -> tuple[float, ...]:
        fits = c.method is not None and (time_budget is None or c.estimated_seconds <= time_budget)
        values = [c.fit.get(m.key, -math.inf if m.higher_is_better else math.inf) for m in ranking]
        return (
            0 if fits else 1,
            *(-v if m.higher_is_better else v for v, m in zip(values, ranking, strict=True)),
        )

    measured.sort(key=key)
    for index, c in enumerate(measured, start=1):
        c.rank = index
        c.reasons = _reasons(c, measured, ranking, time_budget) + c.reasons
    return measured


def _fit_reasons(c: Candidate, ranked: list[Candidate], ranking: tuple[Metric, ...]) -> list[str]:
    """The ranking metrics in words: against the best of the others on the first, plain after."""
    reasons = []
    for position, metric in enumerate(ranking):
        if metric.key not in c.fit:
            continue
        value = c.fit[metric.key]
        others = [o.fit[metric.key] for o in ranked if o is not c and metric.key in o.fit]
        if position > 0 or not others:
            reasons.append(f"{metric.label} {value:.3f}")
            continue
        best = max(others) if metric.higher_is_better else min(others)
        if (value >= best) if metric.higher_is_better else (value <= best):
            word = "highest" if metric.higher_is_better else "lowest"
            reasons.append(
                f"{word} {metric.label} ({value:.3f} vs {best:.3f} next best): the best fit to your data"
            )
        else:
            reasons.append(f"{metric.label} {value:.3f} (best {best:.3f}): fits your data less well")
    return reasons


def _reasons(
    c: Candidate, ranked: list[Candidate], ranking: tuple[Metric, ...], time_budget: float | None
) -> list[str]:
    reasons = _fit_reasons(c, ranked, ranking)
    if "loss" in c.fit:
        reasons.append(f"loss {c.fit['loss']:.3f} per token, perplexity {c.fit['perplexity']:.1f}")
    reasons.append(f"{c.fit.get('tokens_per_char', 0):.2f} tokens per character")
    if c.method is None:
        key, smallest = min(c.memory.items(), key=lambda item: item[1]["total"])
        reasons.append(
            f"does not fit the memory: needs at least {format_size(smallest['total'])} ({_method_name(key)})"
        )
    else:
        key = c.method + ("+gc" if c.gradient_checkpointing else "")
        reasons.append(
            f"fits with {c.method}{' + gradient checkpointing' if c.gradient_checkpointing else ''} "
            f"(~{format_size(c.memory[key]['total'])})"
        )
    if c.estimated_seconds:
        timing = (
            f"~{_duration(c.estimated_seconds)} to train ({c.tokens_per_second:,.0f} tokens/s measured here)"
        )
        if time_budget is not None and c.estimated_seconds > time_budget:
            timing += f"; over the time budget of {_duration(time_budget)}"
        reasons.append(timing)
    return reasons


def _method_name(key: str) -> str:
    return key.replace("+gc", " + gradient checkpointing")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def select(
    task: str,
    data: Any,
    candidates: list[str] | None = None,
    gpu_memory: str | None = None,
    cpu: bool = False,
    time_budget: str | None = None,
    max_params: str | None = None,
    license: str | None = None,
    min_context: int | None = None,
    max_seq_len: int | None = None,
    sample: int = DEFAULT_SAMPLE,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    probe_seconds: float = PROBE_SECONDS,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the candidates on the user's data and recommend one; see the module docstring.
    `settings`: what the user's config says beyond what select chooses (user_settings).

    The steps: the machine (_machine), the candidates (_candidate_names: given, or the catalogue's
    models that offer what the task needs), each measured (measure_candidate), ranked (rank), the
    result and its recommendation (_result, _recommend), written with --out (_write)."""
    from tunesmith.models.catalog import parse_count
    from tunesmith.models.inference import quiet_libraries

    task_info(task)  # an unknown task: a UserError naming the registered ones
    quiet_libraries()
    try:
        params_cap = parse_count(max_params) if max_params else None
    except ValueError as exc:
        raise UserError(f"--max-params: {exc}") from None
    device, measure_device, budget = _machine(gpu_memory, cpu)
    seconds_budget = parse_duration(time_budget) if time_budget else None
    request = Request(
        task, data, measure_device, budget, sample, max_seq_len, device, probe_seconds, settings or {}
    )
    filters = _Filters(params_cap, license, min_context)
    notes: list[str] = []
    names = _candidate_names(task, candidates, filters, notes)
    results = [_measure_named(name, request, filters, progress) for name in names]
    notes += _measurement_notes(results, device, measure_device)
    ranked = rank(results, seconds_budget, task)
    result = _result(request, device, seconds_budget, ranked, results, notes)
    _recommend(result, ranked, request, device)
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


@dataclass(frozen=True)
class _Filters:
    """--max-params, --license, --min-context: what a catalogue model must match."""

    max_params: float | None = None
    license: str | None = None
    min_context: int | None = None

    def given(self) -> list[str]:
        flags = (
            ("--max-params", self.max_params),
            ("--license", self.license),
            ("--min-context", self.min_context),
        )
        return [flag for flag, value in flags if value]

    def excludes(self, entry: Any) -> bool:
        return bool(
            (self.max_params and entry.params > self.max_params)
            or (self.license and entry.license.lower() != self.license.lower())
            or (self.min_context and entry.context < self.min_context)
        )


def _machine(gpu_memory: str | None, cpu: bool) -> tuple[str, str, int]:
    """(the device the estimate is for, the device measurements run on, its memory budget in bytes)."""
    import torch

    if gpu_memory and cpu:
        raise UserError("--gpu-memory and --cpu: give one (the memory of the GPU you will train on, or CPU)")
    try:
        budget_bytes = parse_size(gpu_memory) if gpu_memory else None
    except ValueError as exc:
        raise UserError(f"--gpu-memory: {exc}") from None
    device = "cuda" if gpu_memory else "cpu"
    if not gpu_memory and not cpu:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Measurement runs here (CPU unless a GPU is present); the estimate is for the target device.
    measure_device = "cuda" if torch.cuda.is_available() and device == "cuda" else "cpu"
    return device, measure_device, budget_bytes if budget_bytes is not None else available_memory(device)


def _candidate_names(
    task: str, candidates: list[str] | None, filters: _Filters, notes: list[str]
) -> list[str]:
    """The given candidates, or the catalogue's models that offer what the task needs and match the filters."""
    from tunesmith.models.catalog import filter_catalog

    if candidates:
        return list(candidates)
    needs = task_info(task).catalogue_needs
    entries = filter_catalog(needs, filters.max_params, filters.license, filters.min_context)
    if not entries:
        given = filters.given()
        raise UserError(
            f"no catalogue model offers what task {task} needs ({', '.join(needs)})"
            + (f" and matches {'/'.join(given)}; relax them" if given else "")
            + " or pass --candidates"
        )
    notes.append("no --candidates given: trying the catalogue models that match the filters")
    return [e.id for e in entries]


def _measure_named(name: str, request: Request, filters: _Filters, progress: Progress | None) -> Candidate:
    """One candidate by name: its catalogue facts, skipped when the filters exclude it, else measured."""
    from tunesmith.models.catalog import find

    entry = find(name)
    candidate = Candidate(name=name, info={"catalog": entry.summary()} if entry else {})
    if entry and filters.excludes(entry):
        candidate.status, candidate.reason = "skipped", "excluded by --max-params/--license/--min-context"
        return candidate
    if progress is not None:
        progress.message(f"measuring {name} ...")
    return measure_candidate(candidate, request, progress)


def _measurement_notes(results: list[Candidate], device: str, measure_device: str) -> list[str]:
    notes = []
    hub_skipped = [c.name for c in results if c.status == "skipped" and "not reachable" in c.reason]
    if hub_skipped:
        notes.append(f"hub candidates could not be reached and were skipped: {', '.join(hub_skipped)}")
    if device != measure_device:
        notes.append(
            "fit and throughput were measured on this machine's CPU; memory is estimated for the GPU"
        )
    return notes


def _result(
    request: Request,
    device: str,
    seconds_budget: float | None,
    ranked: list[Candidate],
    results: list[Candidate],
    notes: list[str],
) -> dict[str, Any]:
    """select.json's content before the recommendation; no measured candidate is an error naming why."""
    skipped = [c for c in results if c.status != "ok"]
    if not ranked:
        raise UserError(
            "no candidate could be measured: " + "; ".join(f"{c.name}: {c.reason}" for c in skipped)
        )
    return {
        "task": request.task,
        "data": request.data,
        "device": device,
        "memory_budget_bytes": request.budget,
        "memory_budget": format_size(request.budget),
        "time_budget_seconds": seconds_budget,
        "fit_ranking": [dataclasses.asdict(metric) for metric in task_info(request.task).fit_ranking],
        "ranked": [c.as_dict() for c in ranked],
        "skipped": [{"name": c.name, "reason": c.reason} for c in skipped],
        "notes": notes,
        "recommendation": None,
    }


def _recommend(result: dict[str, Any], ranked: list[Candidate], request: Request, device: str) -> None:
    """The first candidate that fits, its config and reasons; or which would fit with more memory."""
    fitting = [c for c in ranked if c.method is not None]
    if not fitting:
        candidate, key, estimate = min(
            ((c, k, e) for c in ranked for k, e in c.memory.items()), key=lambda item: item[2]["total"]
        )
        result["no_fit"] = (
            f"no candidate fits {format_size(request.budget)}: the smallest that would is {candidate.name} with "
            f"{_method_name(key)}, which needs {format_size(estimate['total'])}"
        )
        return
    best = fitting[0]
    config, why = build_recommendation(best, request.task, request.data, device, request.settings)
    result["recommendation"] = {
        "model": best.name,
        "method": best.method,
        "reasons": best.reasons,
        "hyperparameter_reasoning": why,
        "config": json.loads(json.dumps(config.model_dump(mode="json"))),
        "config_yaml": config_to_yaml(config),
    }


def _write(result: dict[str, Any], out: Path) -> None:
    """--out: select.json and the recommended config.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "select.json", json.dumps(result, indent=2, default=str))
    if result["recommendation"]:
        atomic_write(out / "config.yaml", result["recommendation"]["config_yaml"])
    result["out_dir"] = str(out)
