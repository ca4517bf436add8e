"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunesmith.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: str) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    # The fused kernel (one pass over all parameters) is the fast path on GPU and, since torch 2.4,
    # on CPU too (HF Trainer's default optimizer there as well). Sharded (FSDP DTensor) parameters
    # keep the foreach path, which every placement supports.
    sharded = any(hasattr(p, "full_tensor") for p in decay + no_decay)
    fused = device.split(":")[0] in ("cuda", "cpu") and not sharded
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        fused=fused,
        foreach=None if fused else True,
    )


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float) -> float:
    """LR as a share of the peak at `step` (0-based): linear warmup, then cosine/linear/constant.

    The warm-up is transformers' (get_cosine_schedule_with_warmup and friends): step s of W uses
    s/W of the peak, so step 0 uses 0 and step W the peak, and a config carried over from HF
    Trainer gives the same learning rate at every step (with min_lr_ratio: 0, its decay too).
    """
    if warmup_steps and step < warmup_steps:
        return step / warmup_steps
    if kind == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    warmup = int(round(config.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps, warmup, config.lr_scheduler, config.min_lr_ratio),
    )
