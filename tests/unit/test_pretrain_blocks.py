"""Pretraining blocks: documents split by document, packed into blocks, and kept apart in attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.config import ModelConfig
from tunesmith.data.blocks import BlockRows, Blocks, TrainBlocks, collate_blocks
from tunesmith.data.cache import TokenCache
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.models.load import load_causal_lm
from tunesmith.tasks.pretrain import split_documents
from tunesmith.train.loss import CausalLMLoss

EOS = 0


def fake_cache(documents: list[list[int]]) -> TokenCache:
    """A cache in memory: each document's tokens followed by EOS."""
    tokens = np.asarray([t for d in documents for t in [*d, EOS]], dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) + 1 for d in documents])]).astype(np.int64)
    files = [{"name": "mem.txt", "first_document": 0}]
    return TokenCache(Path("/nonexistent"), tokens, offsets, {"files": files, "eos_id": EOS})


def block_tokens(blocks: Blocks, block: int) -> list[list[int]]:
    return [blocks.cache.tokens[s : s + n].tolist() for s, n in blocks.pieces(block)]


def test_packed_blocks_cover_every_token_once_and_split_long_documents():
    documents = [[1] * 4, [2] * 12, [3] * 2, [4] * 20, [5] * 3]
    cache = fake_cache(documents)
    blocks = Blocks(cache, np.arange(len(documents)), block_len=8)
    assert len(blocks) == 6  # 46 tokens (with EOS) in blocks of 8
    stream = [t for b in range(len(blocks)) for piece in block_tokens(blocks, b) for t in piece]
    assert stream == cache.tokens.tolist()
    assert all(sum(n for _, n in blocks.pieces(b)) == 8 for b in range(len(blocks) - 1))
    # Document 2 (12 tokens + EOS) starts in block 0 and continues in block 1.
    assert block_tokens(blocks, 0) == [[1, 1, 1, 1, 0], [2, 2, 2]]
    assert block_tokens(blocks, 1) == [[2] * 8]
    assert block_tokens(blocks, 2) == [[2, 0], [3, 3, 0], [4, 4, 4]]


def test_unpacked_blocks_hold_one_document_each():
    documents = [[1] * 4, [2] * 12, [3] * 2]
    blocks = Blocks(fake_cache(documents), np.arange(3), block_len=8, packing=False)
    assert [block_tokens(blocks, b) for b in range(len(blocks))] == [
        [[1, 1, 1, 1, 0]],
        [[2] * 8],
        [[2, 2, 2, 2, 0]],
        [[3, 3, 0]],
    ]


def test_blocks_of_a_document_subset_never_contain_other_documents():
    documents = [[i + 1] * (3 + i) for i in range(10)]
    train, held = split_documents(10, 0.3, 100, seed=1)
    blocks = Blocks(fake_cache(documents), train, block_len=5)
    seen = {t for b in range(len(blocks)) for piece in block_tokens(blocks, b) for t in piece} - {EOS}
    assert seen == {int(i) + 1 for i in train}


def test_held_out_split_is_by_document_seeded_and_capped():
    train, held = split_documents(1000, 0.1, 60, seed=3)
    assert len(held) == 60 and len(train) == 940
    assert not set(train.tolist()) & set(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(1000))
    again_train, again_held = split_documents(1000, 0.1, 60, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert not np.array_equal(held, split_documents(1000, 0.1, 60, seed=4)[1])
    train, held = split_documents(1, 0.5, 60, seed=3)
    assert len(train) == 1 and len(held) == 0  # a single document cannot be split


def test_collate_restarts_positions_and_masks_each_document_start():
    blocks = Blocks(fake_cache([[5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15]]), np.arange(3), block_len=8)
    batch = collate_blocks([(blocks, 0), (blocks, 1)], pad_id=0, length=8)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 0, 8, 9, 0, 10]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    # The EOS of each document is a target; the next document's first token is not.
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 6, 7, 0, IGNORE_INDEX, 9, 0, IGNORE_INDEX]
    # Block 1: the rest of document 3 (a continuation starts at position 0) and the padding tail.
    assert batch["input_ids"][1].tolist() == [11, 12, 13, 14, 15, 0, 0, 0]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 12, 13, 14, 15, 0, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["num_targets"] == 5 + 5


def test_replay_blocks_are_mixed_in_at_the_ratio():
    domain = Blocks(fake_cache([[1] * 7] * 10), np.arange(10), block_len=8)
    general = Blocks(fake_cache([[2] * 7] * 3), np.arange(3), block_len=8)
    train = TrainBlocks(domain, [(general, 5)], seed=0)
    assert len(train) == 15 and len(BlockRows(len(train))) == 15 and BlockRows(15)[14] == [14]
    replayed = [train.source(i) for i in range(10, 15)]
    assert all(blocks is general for blocks, _ in replayed)
    assert {b for _, b in replayed} == {0, 1, 2}  # every general block used before any repeats twice
    assert set(train[12].input_ids) == {2, EOS} and set(train[0].input_ids) == {1, EOS}


@pytest.fixture(scope="module")
def tiny_loss(tiny_llama):
    model = load_causal_lm(str(tiny_llama), ModelConfig(name=str(tiny_llama), device="cpu"), "cpu")
    model.eval()
    return CausalLMLoss(model)


def per_token_losses(loss_module: CausalLMLoss, batch: dict, keep: slice) -> torch.Tensor:
    """Loss of every target in `keep` positions, through CausalLMLoss one target at a time."""
    labels = batch["labels"]
    losses = []
    with torch.no_grad():
        for position in range(labels.shape[1])[keep]:
            if labels[0, position] == IGNORE_INDEX:
                continue
            only = torch.full_like(labels, IGNORE_INDEX)
            only[0, position] = labels[0, position]
            out = loss_module(batch["input_ids"], only, batch["position_ids"])
            losses.append(float(out["loss_sum"]))
    return torch.tensor(losses)


def test_changing_one_document_never_changes_another_documents_loss(tiny_loss):
    generator = np.random.default_rng(0)
    doc_a = generator.integers(5, 2000, 9).tolist()
    doc_b = generator.integers(5, 2000, 12).tolist()
    other_a = generator.integers(5, 2000, 9).tolist()
    length = 9 + 1 + 12 + 1
    b_positions = slice(10, length)
    batches = [
        collate_blocks([(Blocks(fake_cache([a, doc_b]), np.arange(2), block_len=length), 0)], 0, length)
        for a in (doc_a, other_a)
    ]
    assert not torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    first, second = (per_token_losses(tiny_loss, batch, b_positions) for batch in batches)
    assert len(first) == 12  # B's tokens after its first, and its EOS
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)
    # The check can fail: with positions running on across the boundary, A leaks into B.
    for batch in batches:
        batch["position_ids"] = torch.arange(length)[None]
    leaked = [per_token_losses(tiny_loss, batch, b_positions) for batch in batches]
    assert (leaked[0] - leaked[1]).abs().max() > 1e-3
