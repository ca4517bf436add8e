"""Packing and batching: best fit, positions restart per document, no cross-document attention."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from tunesmith.data.pack import RowSchedule, collate_rows, pack_best_fit
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.data.tokenize import Example
from tunesmith.train.loss import CausalLMLoss


def test_best_fit_decreasing_fills_rows_within_capacity():
    lengths = [7, 5, 4, 3, 3, 2, 1, 1]
    rows = pack_best_fit(lengths, capacity=8)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert len(rows) == 4  # 26 tokens, capacity 8: the optimum


def test_collate_restarts_positions_and_masks_padding():
    examples = [Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8, 9], [IGNORE_INDEX, 9])]
    batch = collate_rows([[0, 1], [1]], examples, pad_id=0, length=6)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]]
    assert batch["labels"].tolist()[1] == [
        IGNORE_INDEX,
        9,
        IGNORE_INDEX,
        IGNORE_INDEX,
        IGNORE_INDEX,
        IGNORE_INDEX,
    ]
    assert batch["num_targets"] == 4


def per_token_losses(model, batch):
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], batch["input_ids"][0, 1:], reduction="none")


def test_packed_documents_never_see_each_other(tiny_models):
    for arch, path in tiny_models.items():
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
        doc_b = [11, 12, 13, 14, 15]
        examples_1 = [Example([21, 22, 23, 24], [1] * 4), Example(doc_b, doc_b)]
        examples_2 = [Example([31, 32, 33, 34], [1] * 4), Example(doc_b, doc_b)]
        loss_1 = per_token_losses(model, collate_rows([[0, 1]], examples_1, pad_id=0))
        loss_2 = per_token_losses(model, collate_rows([[0, 1]], examples_2, pad_id=0))
        alone = per_token_losses(model, collate_rows([[1]], examples_1, pad_id=0))
        # positions 4.. predict doc B's tokens from doc B's own prefix only
        assert torch.allclose(loss_1[4:], loss_2[4:], atol=1e-6), arch
        assert torch.allclose(loss_1[4:], alone, atol=1e-5), arch


def test_packed_loss_equals_unpacked_loss(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    loss = CausalLMLoss(model)
    examples = [
        Example([3, 4, 5, 6], [IGNORE_INDEX, 4, 5, 6]),
        Example([7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 9]),
    ]
    with torch.no_grad():
        packed = loss(**{k: v for k, v in collate_rows([[0, 1]], examples, 0).items() if k != "num_targets"})
        separate = loss(
            **{k: v for k, v in collate_rows([[0], [1]], examples, 0).items() if k != "num_targets"}
        )
    assert int(packed["num_targets"]) == int(separate["num_targets"]) == 4
    assert torch.allclose(packed["loss_sum"], separate["loss_sum"], atol=1e-5)


def test_chunked_loss_equals_full_cross_entropy(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    examples = [Example(list(range(3, 40)), [IGNORE_INDEX] * 10 + list(range(13, 40)))]
    batch = collate_rows([[0]], examples, 0)
    inputs = {k: v for k, v in batch.items() if k != "num_targets"}
    chunked = CausalLMLoss(model, chunk_size=5)(**inputs)
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], reduction="sum")
    assert torch.allclose(chunked["loss_sum"], reference, atol=1e-4)


def test_schedule_is_a_function_of_the_step_with_no_skips_or_repeats():
    schedule = RowSchedule(num_rows=10, batch_size=2, gradient_accumulation_steps=2, seed=3)
    seen = [r for step in range(5) for micro in schedule.rows_for_step(step) for r in micro]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # a fresh permutation every epoch
    assert schedule.rows_for_step(3) == RowSchedule(10, 2, 2, 3).rows_for_step(3)
