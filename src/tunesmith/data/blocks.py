"""Fixed-length blocks over the documents of a token cache (continued pretraining's examples).

Documents (each ending with EOS) are laid end to end and cut into blocks of `block_len` tokens;
a document longer than a block continues in the next one. Inside a block every document piece
gets its own `position_ids` starting at 0, so attention never crosses a document boundary (see
pack.py), and the first token of each piece has no label, so no position is trained to predict
another document's start. Blocks are computed on demand from a few arrays per document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tunesmith.data.cache import TokenCache
from tunesmith.data.mix import draw_order
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError

Piece = tuple[int, int]  # (start in the cache's token array, length)


class Blocks:
    """Fixed-length blocks over some documents of a cache, computed on demand.

    packing=True: the documents laid end to end, cut every `block_len` tokens.
    packing=False: each document cut on its own, so a block holds pieces of one document only.
    Memory is a few int64 arrays per document, never per token.
    """

    def __init__(self, cache: TokenCache, documents: np.ndarray, block_len: int, packing: bool = True):
        self.cache, self.block_len, self.packing = cache, block_len, packing
        self.documents = np.asarray(documents, dtype=np.int64)
        self.starts = cache.offsets[self.documents]
        self.lengths = cache.offsets[self.documents + 1] - self.starts
        if packing:
            self.ends = np.cumsum(self.lengths)  # end of each document in the end-to-end stream
            self.num_blocks = math.ceil(int(self.ends[-1]) / block_len) if len(self.ends) else 0
        else:
            self.block_ends = np.cumsum((self.lengths + block_len - 1) // block_len)
            self.num_blocks = int(self.block_ends[-1]) if len(self.block_ends) else 0

    def __len__(self) -> int:
        return self.num_blocks

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def pieces(self, block: int) -> list[Piece]:
        """The document pieces of one block, in order."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(block)
        if not self.packing:
            index = int(np.searchsorted(self.block_ends, block, side="right"))
            first_block = int(self.block_ends[index]) - math.ceil(int(self.lengths[index]) / self.block_len)
            offset = (block - first_block) * self.block_len
            length = min(self.block_len, int(self.lengths[index]) - offset)
            return [(int(self.starts[index]) + offset, length)]
        low, high = block * self.block_len, min((block + 1) * self.block_len, int(self.ends[-1]))
        index = int(np.searchsorted(self.ends, low, side="right"))
        pieces = []
        while low < high:
            document_start = int(self.ends[index] - self.lengths[index])
            take = min(high, int(self.ends[index])) - low
            pieces.append((int(self.starts[index]) + low - document_start, take))
            low += take
            index += 1
        return pieces


class TrainBlocks(Sequence[Example]):
    """The training examples: every block of the first source, then the other sources' blocks.

    `mixed` holds (blocks, count) per other source (data.train's mix, data.replay): its block j is
    `draw_order(...)[j]`, a seeded shuffle cycled, so any weight works even when the source has
    fewer blocks than its share (data/mix.py).
    """

    def __init__(self, domain: Blocks, mixed: Sequence[tuple[Blocks, int]] = (), seed: int = 0):
        self.domain = domain
        self.mixed = [blocks for blocks, _ in mixed]
        for blocks, count in mixed:
            if count and not len(blocks):
                raise UserError("a data.train source (or data.replay.path) has no text to train on")
        self.orders = [
            draw_order(len(blocks), count, seed, index + 1) for index, (blocks, count) in enumerate(mixed)
        ]
        self.ends = np.cumsum([len(domain)] + [count for _, count in mixed])

    @property
    def num_replay(self) -> int:
        return int(self.ends[-1]) - len(self.domain)

    def __len__(self) -> int:
        return int(self.ends[-1])

    def source_index(self, index: int) -> int:
        """Which source block `index` comes from (0: the first)."""
        return int(np.searchsorted(self.ends, index, side="right"))

    def source(self, index: int) -> tuple[Blocks, int]:
        which = self.source_index(index)
        if which == 0:
            return self.domain, index
        return self.mixed[which - 1], int(self.orders[which - 1][index - int(self.ends[which - 1])])

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return block_example(*self.source(index), what="replay" if index >= len(self.domain) else "block")


class BlockExamples(Sequence[Example]):
    """The first `count` blocks as Examples, made when asked for (the held-out set)."""

    def __init__(self, blocks: Blocks, count: int):
        self.blocks, self.num_examples = blocks, min(count, len(blocks))

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if index < 0:
            index += self.num_examples
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        return block_example(self.blocks, index, what="held-out block")


class BlockRows(Sequence[list[int]]):
    """PreparedData.rows for blocks: row i is [i], without a list per row in memory."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        if index < 0:
            index += self.num_rows
        if not 0 <= index < self.num_rows:
            raise IndexError(index)
        return [index]


def block_example(blocks: Blocks, block: int, what: str = "block") -> Example:
    """One block as an Example (for previews and checks): labels mask each piece's first token."""
    input_ids: list[int] = []
    labels: list[int] = []
    for start, length in blocks.pieces(block):
        ids = blocks.cache.tokens[start : start + length].tolist()
        input_ids += ids
        labels += [IGNORE_INDEX] + ids[1:]
    first_document = int(np.searchsorted(blocks.cache.offsets, blocks.pieces(block)[0][0], side="right")) - 1
    document = blocks.cache.source_of(first_document)
    return Example(input_ids, labels, source=f"{what} {block} ({document})")


def collate_blocks(items: Sequence[tuple[Blocks, int]], pad_id: int, length: int) -> dict[str, Any]:
    """input_ids, labels, position_ids [len(items), length] for blocks read from the memory map.

    position_ids restart at 0 for every document piece (and the padding tail), so transformers
    builds a block-causal mask; the first token of each piece is not a target, so the position
    before it (the previous document's EOS) is never trained to predict it.
    """
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(items), length), dtype=torch.long)
    for row, (blocks, block) in enumerate(items):
        offset = 0
        for start, size in blocks.pieces(block):
            ids = torch.from_numpy(blocks.cache.tokens[start : start + size].astype(np.int64))
            input_ids[row, offset : offset + size] = ids
            labels[row, offset + 1 : offset + size] = ids[1:]
            position_ids[row, offset : offset + size] = torch.arange(size)
            offset += size
        position_ids[row, offset:] = torch.arange(length - offset)
    num_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_targets": num_targets,
    }


@dataclass
class CorpusStats:
    """What the run trains (or evaluates) on, for the data line, summary.json and the report."""

    num_documents: int = 0
    num_tokens: int = 0
    num_blocks: int = 0
    block_len: int = 0
    num_replay_blocks: int = 0
    cache: str = ""
    cache_reused: bool = False
    cache_seconds: float = 0.0
    sources: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.num_documents:,} documents, {self.num_tokens:,} tokens, {self.num_blocks:,} blocks of {self.block_len}"
        if self.num_replay_blocks:
            text += f" (+{self.num_replay_blocks:,} replay)"
        how = "reused" if self.cache_reused else f"built in {self.cache_seconds:.1f}s"
        return f"{text}; token cache {how}"


def _files_of(cache: TokenCache, documents: np.ndarray, limit: int = 50) -> list[str]:
    """The files these documents come from (the held-out files, for the eval side)."""
    files = cache.meta["files"]
    firsts = np.asarray([f["first_document"] for f in files], dtype=np.int64)
    used = np.unique(np.searchsorted(firsts, documents, side="right") - 1)
    return [files[int(i)]["name"] for i in used[:limit]]


def corpus_stats(cache: TokenCache, blocks: Blocks, num_replay: int = 0) -> CorpusStats:
    """The stats of some blocks of a cache (`num_replay`: replay blocks trained beside them)."""
    return CorpusStats(
        len(blocks.documents),
        blocks.num_tokens,
        len(blocks),
        blocks.block_len,
        num_replay,
        str(cache.path),
        cache.reused,
        round(cache.seconds, 3),
        _files_of(cache, blocks.documents),
    )
