"""The three kinds of finetuning, each a module of plain functions with the same shape.

A task module provides:
    prepare_data(config, tokenizer) -> PreparedData      load, normalize, split, tokenize
    build_model(model_path, config, device, prepared)    base model (+ head) with the adapter attached
    make_loss(model, config) -> nn.Module                returns {loss_sum, num_targets, num_correct}
    evaluate(model, loss, prepared, tokenizer, config, device, phase) -> dict   the task's metrics
    save_final(model, tokenizer, out_dir, prepared, config)                     HF/PEFT directory
The training loop and the run orchestration (api.train) are shared.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

TASK_MODULES = {
    "instruct": "tunesmith.tasks.instruct",
    "pretrain": "tunesmith.tasks.pretrain",
    "classify": "tunesmith.tasks.classify",
    "preference": "tunesmith.tasks.preference",
}


@dataclass
class PreparedData:
    train: Sequence[Any]  # tokenized examples
    eval: Sequence[Any]
    rows: list[list[int]]  # train examples grouped into rows (packed or one per row)
    collate: Callable[[Sequence[Sequence[int]]], dict[str, Any]]  # rows -> batch (from train examples)
    stats: dict[str, Any] = field(default_factory=dict)
    template: Any = None  # chat template (instruct)
    eval_records: list[Any] = field(default_factory=list)  # canonical records behind `eval`
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific (labels, general text ...)


def get_task(task: str) -> ModuleType:
    return importlib.import_module(TASK_MODULES[task])


def hold_out(items: list[Any], fraction: float, max_items: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Split items (records or documents, never blocks) into train and held-out, seeded."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    count = min(max_items, max(1, round(fraction * len(items))), len(items) - 1)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
