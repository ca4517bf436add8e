"""Equivalences: batch 4 x accumulation 1 == batch 1 x accumulation 4 (variable-length rows,
fp32), padding never changes a row's loss, same seed == same run, another seed != same run."""

from __future__ import annotations

import pytest
import torch

from tunesmith import api
from tunesmith.data.pack import collate_rows
from tunesmith.data.tokenize import Example
from tunesmith.train.loss import CausalLMLoss

from .helpers import final_weights, instruct_file, make_config, step_records


def _run(tiny_llama, tmp_path, name, batch_size=4, accumulation=1, seed=0, dropout=0.0):
    config = make_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        run_name=name,
        data__packing=False,  # one example per row: rows of different lengths, padded per batch
        adapter__dropout=dropout,
        train__max_steps=3,
        train__batch_size=batch_size,
        train__gradient_accumulation_steps=accumulation,
        train__seed=seed,
    )
    run_dir = api.train(config).run_dir
    return step_records(run_dir), final_weights(run_dir)


@pytest.fixture(scope="module")
def batch_4(tiny_llama, tmp_path_factory):
    return _run(tiny_llama, tmp_path_factory.mktemp("b4"), "b4")


def test_batch_4_equals_batch_1_with_accumulation_4(tiny_llama, tmp_path, batch_4):
    records_4, weights_4 = batch_4
    records_1, weights_1 = _run(tiny_llama, tmp_path, "b1x4", batch_size=1, accumulation=4)
    assert len(records_4) == len(records_1) == 3
    for big, small in zip(records_4, records_1, strict=True):
        assert big["num_targets"] == small["num_targets"]
        assert small["loss"] == pytest.approx(big["loss"], rel=1e-6, abs=1e-6)
        assert small["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-6, abs=1e-6)
    for name, tensor in weights_4.items():
        torch.testing.assert_close(weights_1[name], tensor, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_a_rows_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.use_cache = False
    loss_module = CausalLMLoss(model).eval()
    short = Example(list(range(5, 12)), [-100, -100] + list(range(7, 12)))
    long = Example(list(range(20, 45)), [-100] * 5 + list(range(25, 45)))
    examples = [short, long]
    with torch.no_grad():
        alone = [
            loss_module(**{k: v for k, v in collate_rows([[i]], examples, 0).items() if k != "num_targets"})
            for i in range(2)
        ]
        together = collate_rows([[0], [1]], examples, 0)
        assert together["input_ids"].shape == (2, 25)  # the short row carries 18 padding tokens
        both = loss_module(**{k: v for k, v in together.items() if k != "num_targets"})
    assert int(both["num_targets"]) == sum(int(out["num_targets"]) for out in alone)
    expected = sum(float(out["loss_sum"]) for out in alone)
    assert float(both["loss_sum"]) == pytest.approx(expected, rel=1e-6)


def test_same_seed_same_run_other_seed_other_run(tiny_llama, tmp_path, batch_4):
    records, weights = batch_4
    again_records, again_weights = _run(tiny_llama, tmp_path, "again")
    assert [r["loss"] for r in again_records] == [r["loss"] for r in records]
    assert all(torch.equal(again_weights[n], t) for n, t in weights.items())
    other_records, other_weights = _run(tiny_llama, tmp_path, "other", seed=1)
    assert [r["loss"] for r in other_records] != [r["loss"] for r in records]
    assert any(not torch.equal(other_weights[n], t) for n, t in weights.items())
