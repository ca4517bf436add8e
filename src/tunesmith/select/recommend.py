"""What `tunesmith select` recommends for the winner: the method that fits the memory, the
hyperparameters from the data size (each with its reason), the ready config and its `prediction:`."""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from tunesmith.config import GPU_EXTRA_HINT, Config, build_config, deep_merge
from tunesmith.models.memory import ModelShape, Setting, estimate_memory
from tunesmith.tasks import get_task

if TYPE_CHECKING:
    from tunesmith.select import Candidate

TINY_MODEL_PARAMS = 50e6  # below this, LoRA saves nothing worth having: train every weight


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
    four_bit: bool = True,
) -> tuple[str | None, bool, dict[str, Any]]:
    """The method to recommend (or None when nothing fits), whether it needs gradient checkpointing,
    and every estimate. Preference: full for tiny models or large data sets, else LoRA, else QLoRA
    (on a GPU, for a task whose 4-bit bases apply: `four_bit`, TaskInfo.four_bit_base)."""
    estimates: dict[str, Any] = {}
    methods = ["full", "lora"] + (["qlora"] if device != "cpu" and four_bit else [])
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


def recommended_values(
    best: Candidate, task: str, data: Any, device: str, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The recommended config as plain values (what select probes and writes), over the user's own
    `settings` (select.user_settings: how the data reads, the task's own sections)."""
    hyper = best.info["hyperparameters"]
    method = best.method or "lora"
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        method = "lora"  # a config that validates; the first reason says it will not fit as written
    batch_size = best.info["batch_size"]
    chosen = {
        "task": task,
        "model": {"name": best.name if best.name == "embedded" else best.path, "device": device},
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
    return deep_merge(settings or {}, chosen)


def prediction_of(best: Candidate, values: dict[str, Any]) -> dict[str, Any]:
    """The `prediction:` block of the recommended config: what `tunesmith train` checks."""
    key = (best.method or "lora") + ("+gc" if best.gradient_checkpointing else "")
    memory = best.memory.get(key, {}).get("total")
    return {
        "source": "select",
        "tokens_per_second": best.tokens_per_second or None,
        "seconds_per_step": best.seconds_per_step or None,
        "peak_memory_bytes": memory,
        "wall_seconds": best.estimated_seconds or None,
        "device": best.info.get("measured_on"),
        "batch_size": values["train"]["batch_size"],
        "gradient_accumulation_steps": values["train"]["gradient_accumulation_steps"],
        "max_seq_len": values["data"]["max_seq_len"],
        "method": values["adapter"]["method"],
    }


def build_recommendation(
    best: Candidate, task: str, data: Any, device: str, settings: dict[str, Any] | None = None
) -> tuple[Config, list[str]]:
    values = recommended_values(best, task, data, "auto", settings)
    method = values["adapter"]["method"]
    values["prediction"] = prediction_of(best, values)
    config = build_config(values, source="tunesmith select recommendation")
    why = list(best.info["reasoning"])
    because = {
        "full": "every weight trains (a tiny model, or enough data to use it)",
        "qlora": "LoRA on 4-bit NF4 base weights (bitsandbytes): only QLoRA fits the memory",
    }.get(method, "a LoRA adapter: a fraction of the memory of full finetuning, and little forgetting")
    why.insert(0, f"method {best.method}: {because}")
    if best.method == "qlora" and method != "qlora":
        why.insert(
            0, f"only QLoRA fits, but bitsandbytes is missing: `{GPU_EXTRA_HINT}`, then adapter.method: qlora"
        )
    if best.gradient_checkpointing:
        why.append("gradient checkpointing on: without it the activations do not fit the memory")
    return config, why
