"""Model selection: which base model, measured on the user's own data, fits the task and the hardware.

For each candidate: load it (a candidate that cannot be loaded is reported and skipped), take a
held-out sample of the user's data through the task's own prepare_data, and measure
  - fit: the loss on the tokens that would be trained, per character of that text (nats/char),
    so models with different tokenizers compare on the same text (classify: the zero-shot label
    cross-entropy and accuracy of label likelihoods);
  - tokens per character of the user's text (tokenizer efficiency: cost);
  - throughput of a few real training steps on this machine, extrapolated to the data x epochs;
  - memory of full / LoRA / QLoRA training (models/memory.py) against the given budget.
Ranking: candidates whose recommended method fits the memory (and the time budget) first, by fit;
then the rest. The winner gets hyperparameters chosen from the data size and a ready config.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import GPU_EXTRA_HINT, Config, build_config, config_to_yaml
from tunesmith.errors import UserError
from tunesmith.models.memory import (
    ModelShape,
    Setting,
    available_memory,
    estimate_memory,
    format_size,
    parse_size,
    shape_from_config,
)
from tunesmith.progress import Progress
from tunesmith.tasks import TASK_NAMES, FitContext, PreparedData, Task, get_task
from tunesmith.train.rundir import atomic_write

DEFAULT_SAMPLE = 64  # held-out examples scored per candidate
THROUGHPUT_STEPS = 2  # timed training steps (after one warm-up step)
PROBE_BATCH_SIZE = 2
TINY_MODEL_PARAMS = 50e6  # below this, LoRA saves nothing worth having: train every weight


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


# --------------------------------------------------------------------------------------------
# Hyperparameters from the data size (documented rules, printed with their reasoning)


def recommend_hyperparameters(
    task: str,
    num_examples: int,
    num_tokens: int,
    lengths: list[int],
    context: int,
    params: float,
    method: str,
    max_seq_len: int | None,
) -> tuple[dict[str, Any], list[str]]:
    """(settings, reasoning lines) for the config."""
    epochs, why_epochs = get_task(task).recommend_epochs(num_examples, num_tokens)
    why = [why_epochs]
    if method == "full":
        learning_rate = 5e-4 if params < TINY_MODEL_PARAMS else 2e-5
        why.append(
            f"learning rate {learning_rate:g}: full finetuning "
            + (
                "of a tiny model (< 50M parameters) tolerates a high rate"
                if params < TINY_MODEL_PARAMS
                else "moves every weight; keep it small"
            )
        )
    else:
        learning_rate = 2e-4
        why.append("learning rate 2e-4: the usual rate for LoRA adapters")
    rank = 8 if num_examples < 1000 else 16 if num_examples < 10_000 else 32 if num_examples < 100_000 else 64
    if method != "full":
        why.append(
            f"LoRA rank {rank} (alpha {2 * rank}): more data can use a larger adapter (<1k: 8, <10k: 16, <100k: 32, else 64)"
        )
    if lengths:
        ordered = sorted(lengths)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        seq_len = max(64, int(math.ceil(p95 / 64) * 64))
        why_len = f"95% of examples are <= {p95} tokens, rounded up to a multiple of 64"
    else:
        seq_len, why_len = 1024, "packed domain text: 1024-token blocks"
    caps = [(context, "the model's context"), (max_seq_len, "--max-seq-len")]
    for cap, name in caps:
        if cap and seq_len > cap:
            seq_len, why_len = cap, f"{why_len}, capped at {name} ({cap})"
    why.append(f"max_seq_len {seq_len}: {why_len}")
    return {"epochs": epochs, "learning_rate": learning_rate, "lora_rank": rank, "max_seq_len": seq_len}, why


def choose_method(
    shape: ModelShape,
    params: float,
    num_examples: int,
    seq_len: int,
    batch_size: int,
    device: str,
    budget: int,
) -> tuple[str | None, bool, dict[str, Any]]:
    """The method to recommend (or None when nothing fits), whether it needs gradient checkpointing,
    and every estimate. Preference: full for tiny models or large data sets, else LoRA, else QLoRA."""
    estimates: dict[str, Any] = {}
    methods = ["full", "lora"] + (["qlora"] if device != "cpu" else [])
    for method in methods:
        for checkpointing in (False, True):
            estimate = estimate_memory(
                shape,
                Setting(
                    method, seq_len, batch_size, checkpointing, 16, device, baseline_bytes=_baseline(device)
                ),
            )
            estimates[method + ("+gc" if checkpointing else "")] = estimate.as_dict()
    prefer_full = params < TINY_MODEL_PARAMS or num_examples >= 20_000
    order = ["full", "lora", "qlora"] if prefer_full else ["lora", "qlora", "full"]
    for method in order:
        for checkpointing in (False, True):
            key = method + ("+gc" if checkpointing else "")
            if key in estimates and estimates[key]["total"] <= budget:
                return method, checkpointing, estimates
    return None, False, estimates


_BASELINE: dict[str, int] = {}


def _baseline(device: str) -> int | None:
    if device != "cpu":
        return None
    if "cpu" not in _BASELINE:
        from tunesmith.train.memory_probe import measure_cpu_baseline

        _BASELINE["cpu"] = measure_cpu_baseline()
    return _BASELINE["cpu"]


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


def _candidate_config(
    task: str, data: Any, model_path: str, seq_len: int, sample: int, method: str, device: str
) -> Config:
    return build_config(
        {
            "task": task,
            "model": {"name": model_path, "device": device},
            "adapter": {"method": method, "r": 8, "alpha": 16, "dropout": 0.0},
            "data": {
                "train": data,
                "max_seq_len": seq_len,
                "eval_fraction": 0.5,  # the held-out sample is max_eval_examples records
                "max_eval_examples": sample,
                "check": False,
            },
            "train": {"batch_size": PROBE_BATCH_SIZE, "learning_rate": 1e-4, "seed": 0},
            "logging": {"progress": False},
        },
        source="tunesmith select",
    )


def measure_throughput(
    task: Task, model_path: str, config: Config, prepared: PreparedData, device: str
) -> tuple[float, float]:
    """(seconds per optimizer step, tokens per second) over a few real training steps."""
    import torch

    from tunesmith.train.loss import batch_to_device
    from tunesmith.train.optim import build_optimizer

    model = task.build_model(model_path, config, device, prepared)
    loss_module = task.make_loss(model, config)
    optimizer = build_optimizer(loss_module, config.train, device)
    loss_module.train()
    num_rows = len(prepared.rows)
    batch_size = config.train.batch_size
    elapsed, tokens = 0.0, 0
    for step in range(THROUGHPUT_STEPS + 1):
        rows = [prepared.rows[(step * batch_size + i) % num_rows] for i in range(batch_size)]
        batch = batch_to_device(prepared.collate(rows), device)
        started = time.perf_counter()
        out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
        (out["loss_sum"] / max(float(batch["num_targets"]), 1.0)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step pays for allocation and kernel selection
            elapsed += time.perf_counter() - started
            tokens += int(batch["input_ids"].numel())
    del model, loss_module, optimizer
    return elapsed / THROUGHPUT_STEPS, tokens / max(elapsed, 1e-9)


def _lengths(prepared: PreparedData) -> list[int]:
    train = prepared.train
    if isinstance(train, list):
        return [len(e.input_ids) for e in train]
    return []


def _num_tokens(prepared: PreparedData) -> int:
    return int(prepared.stats.train.num_tokens or 0)


def measure_candidate(
    candidate: Candidate,
    task: str,
    data: Any,
    device: str,
    budget: int,
    sample: int,
    max_seq_len: int | None,
    progress: Progress | None,
    target_device: str | None = None,
) -> Candidate:
    """Fill in fit, memory and throughput; on a load failure mark it skipped with the reason."""
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    task_contract = get_task(task)
    try:
        candidate.path = resolve_model_path(candidate.name)
        config_file = Path(candidate.path) / "config.json"
        if not config_file.is_file():
            raise UserError(
                f"{candidate.name}: not reachable here (no local directory; the model hub is not used by select)"
            )
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
        shape = shape_from_config(model_config)
        candidate.context = int(
            model_config.get("max_position_embeddings") or model_config.get("n_positions") or 0
        )
        seq_len = min(x for x in (max_seq_len or 512, candidate.context or 512) if x)
        config = _candidate_config(task, data, candidate.path, seq_len, sample, "full", device)
        tokenizer = load_tokenizer(candidate.path, config.model)
        prepared = task_contract.prepare_data(config, tokenizer)
        # Every candidate is probed as the plain causal LM it is: the task says how.
        model = load_causal_lm(candidate.path, config.model, device)
        candidate.fit = task_contract.measure_fit(
            FitContext(model, prepared, tokenizer, config, device, sample)
        )
        candidate.params = sum(p.numel() for p in model.parameters())
        del model
    except UserError as exc:
        candidate.status, candidate.reason = "skipped", str(exc)
        return candidate
    except Exception as exc:  # a broken model directory: report it, rank the rest
        candidate.status, candidate.reason = (
            "skipped",
            f"could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
        )
        return candidate

    num_examples = len(prepared.train) + len(prepared.eval)
    lengths = _lengths(prepared)
    hyper, why = recommend_hyperparameters(
        task,
        num_examples,
        _num_tokens(prepared),
        lengths,
        candidate.context,
        candidate.params,
        "lora",
        max_seq_len,
    )
    batch_size = 8
    method, checkpointing, estimates = choose_method(
        shape,
        candidate.params,
        num_examples,
        hyper["max_seq_len"],
        batch_size,
        target_device or device,
        budget,
    )
    candidate.memory = estimates
    candidate.method, candidate.gradient_checkpointing = method, checkpointing
    hyper, why = recommend_hyperparameters(
        task,
        num_examples,
        _num_tokens(prepared),
        lengths,
        candidate.context,
        candidate.params,
        method or "lora",
        max_seq_len,
    )
    candidate.info["hyperparameters"] = hyper
    candidate.info["reasoning"] = why
    candidate.info["num_examples"] = num_examples
    candidate.info["batch_size"] = batch_size

    # Throughput with the method it would train with (full when nothing fits: still a cost figure).
    try:
        probe_method = "full" if method in (None, "full") else "lora"
        probe_config = _candidate_config(
            task, data, candidate.path, hyper["max_seq_len"], sample, probe_method, device
        )
        seconds, tokens_per_second = measure_throughput(
            task_contract, candidate.path, probe_config, prepared, device
        )
    except Exception as exc:  # timing is advisory; a failure here must not hide the fit figures
        seconds, tokens_per_second = 0.0, 0.0
        candidate.reasons.append(f"throughput not measured ({type(exc).__name__})")
    candidate.seconds_per_step, candidate.tokens_per_second = seconds, tokens_per_second
    # Each timed step had PROBE_BATCH_SIZE rows; the run has len(rows) rows per epoch.
    steps = math.ceil(len(prepared.rows) / PROBE_BATCH_SIZE) * hyper["epochs"]
    candidate.estimated_seconds = steps * seconds
    return candidate


# --------------------------------------------------------------------------------------------
# Ranking, reasons, recommendation


def rank(candidates: list[Candidate], time_budget: float | None) -> list[Candidate]:
    measured = [c for c in candidates if c.status == "ok"]

    def key(c: Candidate) -> tuple[int, float, float]:
        fits = c.method is not None and (time_budget is None or c.estimated_seconds <= time_budget)
        # classify: zero-shot accuracy first (what the user will measure), label cross-entropy next.
        accuracy = c.fit.get("zero_shot_accuracy", 0.0)
        return (0 if fits else 1, -accuracy, c.fit.get("loss_per_char", math.inf))

    measured.sort(key=key)
    best = measured[0].fit.get("loss_per_char") if measured else None
    for index, c in enumerate(measured, start=1):
        c.rank = index
        c.reasons = _reasons(c, measured, best, time_budget) + c.reasons
    return measured


def _reasons(
    c: Candidate, ranked: list[Candidate], best: float | None, time_budget: float | None
) -> list[str]:
    reasons = []
    if "zero_shot_accuracy" in c.fit:
        accuracy = c.fit["zero_shot_accuracy"]
        other = max((o.fit.get("zero_shot_accuracy", 0.0) for o in ranked if o is not c), default=None)
        if other is not None and accuracy >= other:
            reasons.append(
                f"highest zero-shot accuracy on your labels ({accuracy:.2f} vs {other:.2f} next best)"
            )
        elif other is not None:
            reasons.append(f"zero-shot accuracy {accuracy:.2f} (best {other:.2f})")
    value = c.fit.get("loss_per_char", math.inf)
    others = [o.fit.get("loss_per_char", math.inf) for o in ranked if o is not c]
    what = (
        "label cross-entropy" if "label_loss" in c.fit else "loss per character on the tokens you would train"
    )
    if "zero_shot_accuracy" in c.fit:
        reasons.append(f"{what} {value:.3f}")
    elif others and value <= min(others):
        reasons.append(
            f"lowest {what} ({value:.3f} vs {min(others):.3f} next best): the best fit to your data"
        )
    elif best is not None:
        reasons.append(f"{what} {value:.3f} (best {best:.3f}): fits your data less well")
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


def build_recommendation(best: Candidate, task: str, data: Any, device: str) -> tuple[Config, list[str]]:
    hyper = best.info["hyperparameters"]
    method = best.method or "lora"
    missing_bitsandbytes = method == "qlora" and importlib.util.find_spec("bitsandbytes") is None
    if missing_bitsandbytes:
        method = "lora"  # a config that validates; the first reason says it will not fit as written
    batch_size = best.info["batch_size"]
    values = {
        "task": task,
        "model": {"name": best.name if best.name == "embedded" else best.path, "device": "auto"},
        "adapter": {
            "method": method,
            "r": hyper["lora_rank"],
            "alpha": 2 * hyper["lora_rank"],
            "dropout": 0.05,
        },
        "data": {"train": data, "max_seq_len": hyper["max_seq_len"]},
        "train": {
            "epochs": hyper["epochs"],
            "learning_rate": hyper["learning_rate"],
            "batch_size": batch_size,
            "gradient_accumulation_steps": max(1, 16 // batch_size),
            "gradient_checkpointing": best.gradient_checkpointing,
        },
    }
    config = build_config(values, source="tunesmith select recommendation")
    why = list(best.info["reasoning"])
    because = {
        "full": "every weight trains (a tiny model, or enough data to use it)",
        "qlora": "LoRA on 4-bit NF4 base weights (bitsandbytes): only QLoRA fits the memory",
    }.get(method, "a LoRA adapter: a fraction of the memory of full finetuning, and little forgetting")
    why.insert(0, f"method {best.method}: {because}")
    if missing_bitsandbytes:
        why.insert(
            0, f"only QLoRA fits, but bitsandbytes is missing: `{GPU_EXTRA_HINT}`, then adapter.method: qlora"
        )
    if best.gradient_checkpointing:
        why.append("gradient checkpointing on: without it the activations do not fit the memory")
    return config, why


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
) -> dict[str, Any]:
    """Measure the candidates on the user's data and recommend one; see the module docstring."""
    from tunesmith.models.catalog import filter_catalog, find, parse_count
    from tunesmith.models.inference import quiet_libraries

    if task not in TASK_NAMES:
        raise UserError(f"--task {task!r}: use {', '.join(TASK_NAMES)}")
    quiet_libraries()
    if gpu_memory and cpu:
        raise UserError("--gpu-memory and --cpu: give one (the memory of the GPU you will train on, or CPU)")
    try:
        budget_bytes = parse_size(gpu_memory) if gpu_memory else None
        params_cap = parse_count(max_params) if max_params else None
    except ValueError as exc:
        raise UserError(
            f"{'--gpu-memory' if gpu_memory and 'size' in str(exc) else '--max-params'}: {exc}"
        ) from None
    device = "cuda" if gpu_memory else "cpu"
    if not gpu_memory and not cpu:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Measurement runs here (CPU unless a GPU is present); the estimate is for the target device.
    import torch

    measure_device = "cuda" if torch.cuda.is_available() and device == "cuda" else "cpu"
    budget = budget_bytes if budget_bytes is not None else available_memory(device)
    seconds_budget = parse_duration(time_budget) if time_budget else None

    notes: list[str] = []
    names = list(candidates or [])
    if not names:
        entries = filter_catalog(task, params_cap, license, min_context)
        if not entries:
            raise UserError(
                "no catalogue model matches --max-params/--license/--min-context; relax them or pass --candidates"
            )
        names = [e.id for e in entries]
        notes.append("no --candidates given: trying the catalogue models that match the filters")
    results: list[Candidate] = []
    for name in names:
        entry = find(name)
        candidate = Candidate(name=name, info={"catalog": entry.summary()} if entry else {})
        if entry and (
            (params_cap and entry.params > params_cap)
            or (license and entry.license.lower() != license.lower())
            or (min_context and entry.context < min_context)
        ):
            candidate.status, candidate.reason = "skipped", "excluded by --max-params/--license/--min-context"
            results.append(candidate)
            continue
        if progress is not None:
            progress.message(f"measuring {name} ...")
        results.append(
            measure_candidate(
                candidate, task, data, measure_device, budget, sample, max_seq_len, progress, device
            )
        )
    hub_skipped = [c.name for c in results if c.status == "skipped" and "not reachable" in c.reason]
    if hub_skipped:
        notes.append(f"hub candidates could not be reached and were skipped: {', '.join(hub_skipped)}")
    if device != measure_device:
        notes.append(
            "fit and throughput were measured on this machine's CPU; memory is estimated for the GPU"
        )

    ranked = rank(results, seconds_budget)
    skipped = [c for c in results if c.status != "ok"]
    result: dict[str, Any] = {
        "task": task,
        "data": data,
        "device": device,
        "memory_budget_bytes": budget,
        "memory_budget": format_size(budget),
        "time_budget_seconds": seconds_budget,
        "ranked": [c.as_dict() for c in ranked],
        "skipped": [{"name": c.name, "reason": c.reason} for c in skipped],
        "notes": notes,
        "recommendation": None,
    }
    if not ranked:
        raise UserError(
            "no candidate could be measured: " + "; ".join(f"{c.name}: {c.reason}" for c in skipped)
        )
    fitting = [c for c in ranked if c.method is not None]
    if not fitting:
        candidate, key, estimate = min(
            ((c, k, e) for c in ranked for k, e in c.memory.items()), key=lambda item: item[2]["total"]
        )
        result["no_fit"] = (
            f"no candidate fits {format_size(budget)}: the smallest that would is {candidate.name} with "
            f"{_method_name(key)}, which needs {format_size(estimate['total'])}"
        )
    else:
        best = fitting[0]
        config, why = build_recommendation(best, task, data, device)
        result["recommendation"] = {
            "model": best.name,
            "method": best.method,
            "reasons": best.reasons,
            "hyperparameter_reasoning": why,
            "config": json.loads(json.dumps(config.model_dump(mode="json"))),
            "config_yaml": config_to_yaml(config),
        }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "select.json", json.dumps(result, indent=2, default=str))
        if result["recommendation"]:
            atomic_write(out / "config.yaml", result["recommendation"]["config_yaml"])
        result["out_dir"] = str(out)
    return result
