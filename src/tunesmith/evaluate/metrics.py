"""Metrics for language-model tasks: held-out loss, token accuracy, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from tunesmith.data.pack import collate_rows, make_rows
from tunesmith.data.tokenize import Example
from tunesmith.train.loss import batch_to_device


@torch.no_grad()
def lm_metrics(
    loss_module: torch.nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    max_seq_len: int,
    batch_size: int = 8,
    device: str = "cpu",
    packing: bool = True,
) -> dict[str, float]:
    """Mean loss over every supervised token of `examples`, token accuracy and perplexity."""
    was_training = loss_module.training
    loss_module.eval()
    rows = make_rows(examples, max_seq_len, packing)
    loss_sum, targets, correct = 0.0, 0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate_rows(rows[start : start + batch_size], examples, pad_id)
        batch = batch_to_device(batch, device)
        out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
        loss_sum += float(out["loss_sum"])
        targets += int(out["num_targets"])
        correct += int(out["num_correct"])
    loss_module.train(was_training)
    loss = loss_sum / max(targets, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(targets, 1),
        "num_tokens": targets,
    }


def per_example_losses(
    loss_module: torch.nn.Module, examples: Sequence[Example], pad_id: int, device: str = "cpu"
) -> list[float]:
    """Mean loss of each example alone (for fixed/broken comparisons)."""
    losses: list[float] = []
    was_training = loss_module.training
    loss_module.eval()
    with torch.no_grad():
        for index in range(len(examples)):
            batch = batch_to_device(collate_rows([[index]], examples, pad_id), device)
            out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
            losses.append(float(out["loss_sum"]) / max(int(out["num_targets"]), 1))
    loss_module.train(was_training)
    return losses


def summarize_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """after - before for every numeric metric both have."""
    return {
        key: after[key] - before[key]
        for key in before
        if key in after and isinstance(before[key], (int, float)) and isinstance(after[key], (int, float))
    }
