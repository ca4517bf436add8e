"""NaN/inf loss or gradient: the bad step is never applied; stop with the step and what was
non-finite, or skip under on_nonfinite: skip up to a cap; no checkpoint with non-finite
weights. A batch with zero supervised tokens never yields NaN."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from tunesmith import api
from tunesmith.errors import NonFiniteError
from tunesmith.tasks import instruct
from tunesmith.train.checkpoint import TRAINABLE_FILE, list_checkpoints
from tunesmith.train.loss import CausalLMLoss

from .helpers import instruct_file, make_config, step_records


class PoisonedLoss(torch.nn.Module):
    """The real loss, with a NaN loss or an inf gradient injected at chosen forward calls."""

    def __init__(self, inner: torch.nn.Module, bad_calls: set[int], what: str):
        super().__init__()
        self.inner, self.bad_calls, self.what, self.calls = inner, bad_calls, what, 0

    def forward(self, **batch):
        out = self.inner(**batch)
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls:
                if self.what == "loss":
                    out["loss_sum"] = out["loss_sum"] * float("nan")
                else:  # the loss stays finite, the gradients do not
                    out["loss_sum"].register_hook(lambda grad: grad * float("inf"))
        return out


def _train_poisoned(tiny_llama, tmp_path, monkeypatch, bad_calls, what, **overrides):
    holder = {}

    def make_loss(model, config, cross_entropy=None):
        holder["loss"] = PoisonedLoss(CausalLMLoss(model, cross_entropy=cross_entropy), bad_calls, what)
        return holder["loss"]

    monkeypatch.setattr(instruct, "TASK", dataclasses.replace(instruct.TASK, make_loss=make_loss))
    config = make_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        train__max_steps=5,
        train__save_every=1,
        train__keep_last=10,
        **overrides,
    )
    error = None
    try:
        api.train(config)
    except NonFiniteError as exc:
        error = exc
    return error, holder["loss"], tmp_path / "runs" / "run"


def _trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("what", "named"), [("loss", "loss"), ("gradient", "gradient")])
def test_nonfinite_step_stops_the_run_and_is_not_applied(tiny_llama, tmp_path, monkeypatch, what, named):
    error, loss_module, run_dir = _train_poisoned(tiny_llama, tmp_path, monkeypatch, {3}, what)
    assert error is not None
    assert str(error).startswith(f"step 3: non-finite {named}")
    assert "was not applied" in str(error)
    # The model in memory is exactly the one after step 2: the bad update never touched it.
    after_step_2 = load_file(str(run_dir / "checkpoints" / "step-000002" / TRAINABLE_FILE))
    for name, tensor in _trainable(loss_module).items():
        assert torch.equal(tensor, after_step_2[name]), name
    # Checkpoints exist for the good steps only, and every one of them is finite.
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [1, 2]
    for _, path in list_checkpoints(run_dir / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path / TRAINABLE_FILE)).values())
    assert not (run_dir / "final").exists()
    events = [r for r in (run_dir / "metrics.jsonl").read_text().splitlines() if "nonfinite" in r]
    assert len(events) == 1 and '"step": 3' in events[0] and f'"what": "{named}' in events[0]


def test_skip_policy_skips_the_bad_step_and_finishes(tiny_llama, tmp_path, monkeypatch):
    error, loss_module, run_dir = _train_poisoned(
        tiny_llama, tmp_path, monkeypatch, {2}, "loss", train__on_nonfinite="skip", train__max_skipped_steps=1
    )
    assert error is None
    records = step_records(run_dir)
    assert [r["step"] for r in records] == [1, 3, 4, 5]  # step 2 skipped, the run went on to the end
    assert all(math.isfinite(r["loss"]) for r in records)
    # The skipped step changed nothing: the weights after it equal those before it.
    checkpoints = dict(list_checkpoints(run_dir / "checkpoints"))
    assert 2 in checkpoints  # the skipped step still counts, so save_every stays aligned
    before = load_file(str(checkpoints[1] / TRAINABLE_FILE))
    after = load_file(str(checkpoints[2] / TRAINABLE_FILE))
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert (run_dir / "final").is_dir()


def test_skip_policy_stops_after_the_cap(tiny_llama, tmp_path, monkeypatch):
    error, _, run_dir = _train_poisoned(
        tiny_llama,
        tmp_path,
        monkeypatch,
        {2, 4},
        "gradient",
        train__on_nonfinite="skip",
        train__max_skipped_steps=1,
    )
    assert error is not None
    assert str(error).startswith("step 4: non-finite gradient")
    assert "max_skipped_steps=1" in str(error)
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [1, 2, 3]


def test_zero_supervised_tokens_never_yield_nan(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.use_cache = False
    loss_module = CausalLMLoss(model)
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    out = loss_module(
        input_ids=input_ids, labels=torch.full_like(input_ids, -100), position_ids=torch.arange(5)[None]
    )
    assert int(out["num_targets"]) == 0 and out["loss_sum"].item() == 0.0
    # The loop divides by max(targets, 1) and backward works: zero gradients, not NaN or an error.
    (out["loss_sum"] / max(float(out["num_targets"]), 1.0)).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_training_steps_with_zero_supervised_tokens_are_finite(tiny_llama):
    """Through the loop: a micro-batch without targets next to one with targets, and a whole
    step without targets. Losses and gradient norms stay finite and training goes on."""
    from transformers import AutoModelForCausalLM

    from tunesmith.data.pack import collate_rows
    from tunesmith.data.tokenize import Example
    from tunesmith.train.checkpoint import TrainerState
    from tunesmith.train.loop import LoopSettings, train_loop

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.use_cache = False
    loss_module = CausalLMLoss(model)
    examples = [Example([5, 6, 7, 8], [-100] * 4), Example([9, 10, 11], [-100, 10, 11])]
    untrained, trained = collate_rows([[0]], examples, 0), collate_rows([[1]], examples, 0)
    steps = [[untrained, trained], [untrained, untrained], [trained, untrained]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    records = []
    state = train_loop(
        loss_module,
        optimizer,
        scheduler,
        lambda step: steps[step],
        LoopSettings(total_steps=3),
        TrainerState(step=0, total_steps=3),
        records.append,
    )
    assert state.step == 3 and state.skipped_steps == 0
    assert [r["num_targets"] for r in records] == [2, 0, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert records[1]["loss"] == 0.0 and records[1]["grad_norm"] == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
