"""Continued pretraining: next-token loss on every token of unlabelled domain text.

The corpus is tokenized once into the on-disk cache (data/cache.py) and read back through a
memory map, so RAM does not grow with the corpus. Documents (each ending with EOS) are split
into train and held-out *by document*, then laid end to end and cut into blocks of
`data.max_seq_len` tokens; a document longer than a block continues in the next one. Inside a
block every document piece gets its own `position_ids` starting at 0, so attention never
crosses a document boundary (see data/pack.py), and the first token of each piece has no label,
so no position is trained to predict another document's start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.config import Config
from tunesmith.data.cache import TokenCache, load_or_build
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.evaluate.metrics import batch_metrics
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.models.load import GENERAL_TEXT_PATH
from tunesmith.tasks import PreparedData
from tunesmith.tasks.instruct import build_model, make_loss  # noqa: F401  (same causal LM and loss)

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
    """The training examples: every domain block, then replay blocks of general text.

    Replay block j is general block `order[j % len(order)]` (a seeded shuffle), so any ratio works
    even when the general text has fewer blocks than the replay needs.
    """

    def __init__(self, domain: Blocks, replay: Blocks | None = None, num_replay: int = 0, seed: int = 0):
        self.domain, self.replay, self.num_replay = domain, replay, num_replay if replay is not None else 0
        self.order = (
            np.random.default_rng(seed).permutation(len(replay))
            if replay is not None and len(replay)
            else None
        )
        if self.num_replay and self.order is None:
            raise UserError("config key `data.replay.path`: the replay text is empty")

    def __len__(self) -> int:
        return len(self.domain) + self.num_replay

    def source(self, index: int) -> tuple[Blocks, int]:
        if index < len(self.domain):
            return self.domain, index
        assert self.replay is not None and self.order is not None
        return self.replay, int(self.order[(index - len(self.domain)) % len(self.order)])

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return block_example(*self.source(index), what="replay" if index >= len(self.domain) else "block")


class BlockExamples(Sequence[Example]):
    """The first `count` blocks as Examples, made when asked for (the held-out set)."""

    def __init__(self, blocks: Blocks, count: int):
        self.blocks, self.count = blocks, min(count, len(blocks))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
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


def split_documents(
    num_documents: int, fraction: float, max_documents: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents (seeded, by document, never by block) and the rest, each in corpus order."""
    if fraction <= 0 or num_documents < 2:
        return np.arange(num_documents), np.zeros(0, dtype=np.int64)
    count = min(max_documents, max(1, round(fraction * num_documents)), num_documents - 1)
    held = np.zeros(num_documents, dtype=bool)
    held[np.random.default_rng(seed).permutation(num_documents)[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


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


def _stats(cache: TokenCache, blocks: Blocks, num_replay: int = 0) -> CorpusStats:
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


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def prepare_data(config: Config, tokenizer: Any) -> PreparedData:
    data = config.data
    if data.train is None:
        raise UserError("config key `data.train` is missing; point it at your text files, folder or JSONL")
    policy = ErrorPolicy(data.on_error, data.max_skipped)
    show = config.logging.progress

    def cache(spec: str | list[str], what: str) -> TokenCache:
        return load_or_build(spec, tokenizer, data.cache_dir, data.format, data.fields, policy, what, show)

    train_cache = cache(data.train, "data.train")
    warnings = list(train_cache.warnings)
    if data.eval is not None:
        eval_cache = cache(data.eval, "data.eval")
        warnings += eval_cache.warnings
        train_documents, eval_documents = (
            np.arange(train_cache.num_documents),
            np.arange(eval_cache.num_documents),
        )
    else:
        eval_cache = train_cache
        train_documents, eval_documents = split_documents(
            train_cache.num_documents, data.eval_fraction, data.max_eval_examples, config.train.seed
        )
        if data.eval_fraction > 0 and len(eval_documents) == 0:
            warnings.append(
                f"data.train has a single document ({train_cache.meta['files'][0]['name']}), so none can be held out "
                "and there is no domain perplexity; set data.eval to held-out text, or give several documents "
                "(files, or JSONL records)"
            )
    domain = Blocks(train_cache, train_documents, data.max_seq_len, data.packing)
    evaluation = Blocks(eval_cache, eval_documents, data.max_seq_len, data.packing)
    # Evaluation cost is bounded: the first max_eval_examples blocks of the held-out documents.
    num_eval_blocks = min(len(evaluation), data.max_eval_examples)

    replay, num_replay = None, 0
    if data.replay is not None:
        replay_cache = cache(data.replay.path, "data.replay.path")
        warnings += replay_cache.warnings
        replay = Blocks(replay_cache, np.arange(replay_cache.num_documents), data.max_seq_len, data.packing)
        # ratio = replay / (domain + replay)
        num_replay = max(1, round(data.replay.ratio / (1 - data.replay.ratio) * len(domain)))
        probe = data.general_text or GENERAL_TEXT_PATH
        if config.eval.forgetting and _same_file(data.replay.path, probe):
            warnings.append(
                f"data.replay.path is the forgetting probe's text ({probe}): training on it makes the general "
                "perplexity look better than it is; set data.general_text to other general text"
            )
    train = TrainBlocks(domain, replay, num_replay, config.train.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else train_cache.meta["eos_id"]
    length = data.max_seq_len

    def collate(rows: Sequence[Sequence[int]]) -> dict[str, Any]:
        return collate_blocks([train.source(i) for row in rows for i in row], pad_id, length)

    eval_stats = _stats(eval_cache, evaluation) if len(evaluation) else None
    if eval_stats is not None:
        eval_stats.num_blocks = num_eval_blocks
    return PreparedData(
        train=train,
        eval=BlockExamples(evaluation, num_eval_blocks),
        rows=BlockRows(len(train)),  # type: ignore[arg-type]
        collate=collate,
        stats={
            "train": _stats(train_cache, domain, num_replay),
            "eval": eval_stats,
            "warnings": warnings,
            "skipped_records": list(policy.skipped),
        },
        extra={"eval_blocks": evaluation, "pad_id": pad_id},
    )


def block_metrics(
    loss_module: torch.nn.Module, blocks: Blocks, num_blocks: int, pad_id: int, batch_size: int, device: str
) -> dict[str, float]:
    """Mean next-token loss, perplexity and token accuracy over the first `num_blocks` blocks."""
    batches = (
        collate_blocks(
            [(blocks, b) for b in range(start, min(start + batch_size, num_blocks))], pad_id, blocks.block_len
        )
        for start in range(0, num_blocks, batch_size)
    )
    return batch_metrics(loss_module, batches, device)


def evaluate(
    model: Any,
    loss: torch.nn.Module,
    prepared: PreparedData,
    tokenizer: Any,
    config: Config,
    device: str,
    phase: str = "after",
    generate: bool = True,
) -> dict[str, Any]:
    """Perplexity on the held-out domain documents (api adds the general-text probe)."""
    if not len(prepared.eval):
        return {}
    return block_metrics(
        loss,
        prepared.extra["eval_blocks"],
        len(prepared.eval),
        prepared.extra["pad_id"],
        config.train.batch_size,
        device,
    )


def save_final(model: Any, tokenizer: Any, out_dir: Path, prepared: PreparedData, config: Config) -> None:
    """A PEFT adapter directory (LoRA) or a full model directory, with the tokenizer."""
    causal_lm = unwrap_causal_lm(model)
    # Inference users want the KV cache; it is off only for packed training.
    causal_lm.config.use_cache = True
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    causal_lm.config.use_cache = False
