"""The loop reads a step's loss and correct counts from the device once (train/loop.py _step_sums)."""

from __future__ import annotations

import torch

from tunesmith.train.loop import _step_sums


def test_step_sums_are_the_per_micro_batch_sums_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=generator) * 10**k for k in range(-3, 5)]
    corrects = [torch.tensor(k * 7) for k in range(len(losses) - 1)] + [3]  # a plain int too
    want_loss, want_correct = 0.0, 0
    for loss, correct in zip(losses, corrects, strict=True):  # what the loop did per micro-batch
        want_loss += float(loss)
        want_correct += int(correct)
    got_loss, got_correct = _step_sums(losses, corrects)
    assert got_loss == want_loss and got_correct == want_correct
    assert _step_sums([], []) == (0.0, 0)
