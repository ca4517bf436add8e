"""The optimizer and the learning-rate schedule (train/optim.py)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import TrainConfig
from tunesmith.train.optim import build_optimizer, build_scheduler, lr_multiplier


def _rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_warmup_and_decay_are_transformers_schedule_step_by_step(kind):
    # A config carried over from HF Trainer gets the same rate at every step: warm-up s/W
    # (step 0 at 0, the peak at step W), then the decay to 0 (min_lr_ratio: 0).
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    total, warmup = 50, 10
    model = torch.nn.Linear(4, 4)
    config = TrainConfig(learning_rate=1e-3, warmup_ratio=warmup / total, lr_scheduler=kind, min_lr_ratio=0.0)
    ours_optimizer = build_optimizer(model, config, "cpu")
    ours = _rates(build_scheduler(ours_optimizer, config, total), ours_optimizer, total)
    hf_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    make = get_cosine_schedule_with_warmup if kind == "cosine" else get_linear_schedule_with_warmup
    hf = _rates(make(hf_optimizer, warmup, total), hf_optimizer, total)
    assert ours == pytest.approx(hf, rel=1e-12, abs=1e-15)
    assert ours[0] == 0.0 and ours[warmup] == pytest.approx(1e-3)


def test_warmup_reaches_s_over_w_of_the_peak():
    assert [lr_multiplier(s, 100, 4, "constant", 0.1) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_adamw_is_fused_on_cpu():
    model = torch.nn.Linear(4, 4)
    optimizer = build_optimizer(model, TrainConfig(), "cpu")
    assert optimizer.defaults["fused"] is True
