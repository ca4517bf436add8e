"""Exact resume: stop at step k (epoch boundary, mid-epoch, mid-accumulation) + resume
== one uninterrupted run: same per-step losses, LR, samples seen and final weights (CPU fp32,
shuffling and LoRA dropout on, evaluation during training)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tunesmith import api
from tunesmith.errors import TrainingInterrupted
from tunesmith.train import loop as loop_module
from tunesmith.train.loss import batch_to_device

from .helpers import RecordingProgress, final_weights, instruct_file, make_config, step_records

TOTAL_STEPS = 7
# 18 rows, 2 held out -> 16 train rows (no packing); 2 x 2 rows per step -> 4 steps per epoch.
STEPS_PER_EPOCH = 4


def _config(tiny_llama: Path, tmp_path: Path, name: str):
    return make_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        run_name=name,
        adapter__dropout=0.1,
        data__packing=False,
        train__max_steps=TOTAL_STEPS,
        train__batch_size=2,
        train__gradient_accumulation_steps=2,
        train__eval_every=2,  # evaluation between steps must not disturb the training RNG stream
        train__warmup_ratio=0.2,
    )


class _SeenBatches:
    """Records every micro-batch the loop trains on; optionally sends SIGTERM during one."""

    def __init__(self, signal_at_micro_batch: int | None = None):
        self.seen: list[tuple[int, ...]] = []
        self.signal_at = signal_at_micro_batch

    def __call__(self, batch, device):
        self.seen.append(tuple(batch["input_ids"].flatten().tolist()))
        if self.signal_at is not None and len(self.seen) == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch_to_device(batch, device)


def _run(config, monkeypatch, resume=False, signal_after_step=None, signal_at_micro_batch=None):
    seen = _SeenBatches(signal_at_micro_batch)
    monkeypatch.setattr(loop_module, "batch_to_device", seen)

    def on_step(step, record):
        if step == signal_after_step:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = None
    try:
        api.train(config, resume=resume, progress=RecordingProgress(on_step))
    except TrainingInterrupted as exc:
        interrupted = exc
    return seen.seen, interrupted


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    """One uninterrupted run of TOTAL_STEPS steps."""
    tmp_path = tmp_path_factory.mktemp("reference")
    config = _config(tiny_llama, tmp_path, "reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen, interrupted = _run(config, monkeypatch)
    assert interrupted is None
    run_dir = tmp_path / "runs" / "reference"
    return {"seen": seen, "records": step_records(run_dir), "weights": final_weights(run_dir)}


@pytest.mark.parametrize(
    ("where", "signal_after_step", "signal_at_micro_batch", "stopped_at"),
    [
        ("epoch boundary", STEPS_PER_EPOCH, None, STEPS_PER_EPOCH),
        ("mid-epoch", 6, None, 6),
        # SIGTERM between the two micro-batches of step 3: the step is finished, then saved.
        ("mid-accumulation", None, 2 * 2 + 1, 3),
    ],
)
def test_stop_and_resume_equals_uninterrupted_run(
    tiny_llama, tmp_path, monkeypatch, reference, where, signal_after_step, signal_at_micro_batch, stopped_at
):
    config = _config(tiny_llama, tmp_path, "resumed")
    run_dir = tmp_path / "runs" / "resumed"
    seen_first, interrupted = _run(
        config, monkeypatch, signal_after_step=signal_after_step, signal_at_micro_batch=signal_at_micro_batch
    )
    assert interrupted is not None, f"{where}: the signal did not stop the run"
    assert Path(interrupted.checkpoint_dir).name == f"step-{stopped_at:06d}"
    assert not (run_dir / "final").exists()

    seen_second, interrupted = _run(config, monkeypatch, resume=True)
    assert interrupted is None

    # The same samples in the same order: nothing skipped, nothing repeated.
    assert seen_first + seen_second == reference["seen"]
    records = step_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    assert [r["loss"] for r in records] == [r["loss"] for r in reference["records"]]
    assert [r["grad_norm"] for r in records] == [r["grad_norm"] for r in reference["records"]]
    # The LR schedule continues where it stopped (warmup then cosine), not from the start.
    assert [r["lr"] for r in records] == [r["lr"] for r in reference["records"]]
    weights = final_weights(run_dir)
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, reference["weights"][name]), f"{where}: {name} differs after resume"


def test_dropout_is_on_so_the_rng_state_matters(tiny_llama, tmp_path, reference, monkeypatch):
    """Guard for the test above: with dropout, a different RNG stream gives different losses."""
    config = _config(tiny_llama, tmp_path, "other-rng")
    monkeypatch.setattr(torch, "manual_seed", lambda seed: torch.random.manual_seed(seed + 1))
    _run(config, monkeypatch)
    records = step_records(tmp_path / "runs" / "other-rng")
    assert [r["loss"] for r in records] != [r["loss"] for r in reference["records"]]
