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

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import Config
from tunesmith.data.blocks import (
    BlockExamples,
    BlockRows,
    Blocks,
    TrainBlocks,
    collate_blocks,
    corpus_stats,
)
from tunesmith.data.cache import TokenCache, load_or_build
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.errors import UserError
from tunesmith.evaluate.metrics import batch_metrics
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.models.load import GENERAL_TEXT_PATH
from tunesmith.progress import Progress
from tunesmith.tasks import (
    DataStats,
    EvalContext,
    FitContext,
    Phase,
    PreparedData,
    Task,
    held_out_count,
    no_label,
    no_trained_settings,
    task_info,
)
from tunesmith.tasks.instruct import build_model, lm_fit, load_for_eval, make_loss

if TYPE_CHECKING:
    from tunesmith.tasks import TrainedModel


def split_documents(
    num_documents: int, fraction: float, max_documents: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents (seeded, by document, never by block) and the rest, each in corpus order."""
    # The rule of tasks.hold_out; the seeded order is numpy's, over the cache's document indices.
    count = held_out_count(num_documents, fraction, max_documents)
    if not count:
        return np.arange(num_documents), np.zeros(0, dtype=np.int64)
    held = np.zeros(num_documents, dtype=bool)
    held[np.random.default_rng(seed).permutation(num_documents)[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def prepare_data(
    config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> PreparedData:
    data = config.data
    if data.train is None:
        raise UserError("config key `data.train` is missing; point it at your text files, folder or JSONL")
    policy = ErrorPolicy(data.on_error, data.max_skipped)
    show = progress if config.logging.progress else None  # the token cache's build, over the corpus bytes

    def cache(spec: str | list[str], what: str) -> TokenCache:
        return load_or_build(spec, tokenizer, data.cache_dir, data.format, data.fields, policy, what, show)

    train_cache = cache(data.train, "data.train")
    warnings = list(train_cache.warnings)
    eval_cache, train_documents, eval_documents = _held_out_documents(config, train_cache, cache, warnings)
    domain = Blocks(train_cache, train_documents, data.max_seq_len, data.packing)
    evaluation = Blocks(eval_cache, eval_documents, data.max_seq_len, data.packing)
    # Evaluation cost is bounded: the first max_eval_examples blocks of the held-out documents.
    num_eval_blocks = min(len(evaluation), data.max_eval_examples)

    replay, num_replay = _replay_blocks(config, cache, len(domain), warnings)
    train = TrainBlocks(domain, replay, num_replay, config.train.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else train_cache.meta["eos_id"]
    length = data.max_seq_len

    def collate(rows: Sequence[Sequence[int]]) -> dict[str, Any]:
        return collate_blocks([train.source(i) for row in rows for i in row], pad_id, length)

    eval_stats = corpus_stats(eval_cache, evaluation) if len(evaluation) else None
    if eval_stats is not None:
        eval_stats.num_blocks = num_eval_blocks
    return PreparedData(
        train=train,
        eval=BlockExamples(evaluation, num_eval_blocks),
        rows=BlockRows(len(train)),
        collate=collate,
        stats=DataStats(
            corpus_stats(train_cache, domain, num_replay),
            eval_stats,
            skipped_records=list(policy.skipped),
            warnings=warnings,
        ),
        pad_id=pad_id,
        eval_blocks=evaluation,
    )


def _held_out_documents(
    config: Config, train_cache: TokenCache, cache: Any, warnings: list[str]
) -> tuple[TokenCache, Any, Any]:
    """(the held-out documents' cache, train documents, held-out documents): data.eval's, or a share
    of data.train's documents (never blocks: a document is trained or held out whole)."""
    data = config.data
    if data.eval is not None:
        eval_cache = cache(data.eval, "data.eval")
        warnings += eval_cache.warnings
        return eval_cache, np.arange(train_cache.num_documents), np.arange(eval_cache.num_documents)
    train_documents, eval_documents = split_documents(
        train_cache.num_documents, data.eval_fraction, data.max_eval_examples, config.train.seed
    )
    if data.eval_fraction > 0 and len(eval_documents) == 0:
        warnings.append(
            f"data.train has a single document ({train_cache.meta['files'][0]['name']}), so none can be held out "
            "and there is no domain perplexity; set data.eval to held-out text, or give several documents "
            "(files, or JSONL records)"
        )
    return train_cache, train_documents, eval_documents


def _replay_blocks(
    config: Config, cache: Any, num_domain: int, warnings: list[str]
) -> tuple[Blocks | None, int]:
    """data.replay: general-text blocks mixed into training (ratio = replay / (domain + replay))."""
    data = config.data
    if data.replay is None:
        return None, 0
    replay_cache = cache(data.replay.path, "data.replay.path")
    warnings += replay_cache.warnings
    replay = Blocks(replay_cache, np.arange(replay_cache.num_documents), data.max_seq_len, data.packing)
    num_replay = max(1, round(data.replay.ratio / (1 - data.replay.ratio) * num_domain))
    probe = data.general_text or GENERAL_TEXT_PATH
    if config.eval.forgetting and _same_file(data.replay.path, probe):
        warnings.append(
            f"data.replay.path is the forgetting probe's text ({probe}): training on it makes the general "
            "perplexity look better than it is; set data.general_text to other general text"
        )
    return replay, num_replay


def block_metrics(
    loss_module: nn.Module, blocks: Blocks, num_blocks: int, pad_id: int, batch_size: int, device: str
) -> dict[str, float]:
    """Mean next-token loss, perplexity and token accuracy over the first `num_blocks` blocks."""
    batches = (
        collate_blocks(
            [(blocks, b) for b in range(start, min(start + batch_size, num_blocks))], pad_id, blocks.block_len
        )
        for start in range(0, num_blocks, batch_size)
    )
    return batch_metrics(loss_module, batches, device)


def evaluate(ctx: EvalContext, phase: Phase = "after") -> dict[str, Any]:
    """Perplexity on the held-out domain documents (evaluation adds the general-text probe)."""
    prepared = ctx.prepared
    if not len(prepared.eval) or prepared.eval_blocks is None:
        return {}
    return block_metrics(
        ctx.loss,
        prepared.eval_blocks,
        len(prepared.eval),
        prepared.pad_id,
        ctx.config.train.batch_size,
        ctx.device,
    )


def save_final(
    model: TrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    prepared: PreparedData,
    config: Config,
) -> None:
    """A PEFT adapter directory (LoRA) or a full model directory, with the tokenizer."""
    causal_lm = unwrap_causal_lm(model)
    # Inference users want the KV cache; it is off only for packed training.
    causal_lm.config.use_cache = True
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    causal_lm.config.use_cache = False


def measure_fit(ctx: FitContext) -> dict[str, Any]:
    """select's probe: the loss per character of the held-out text (every token is trained)."""
    characters = 0
    for index in range(len(ctx.prepared.eval)):
        labels = ctx.prepared.eval[index].labels or []
        ids = [t for t in labels if t != IGNORE_INDEX]
        characters += len(ctx.tokenizer.decode(ids, skip_special_tokens=True))
    return lm_fit(evaluate, ctx, characters)


def recommend_epochs(num_examples: int, num_tokens: int) -> tuple[int, str]:
    """Domain text is measured in tokens: two passes over a small corpus, one over a large one."""
    epochs = 2 if num_tokens < 1_000_000 else 1
    how = "< 1M: two passes" if epochs == 2 else ">= 1M: one pass is enough"
    return epochs, f"epochs {epochs}: {num_tokens:,} tokens of domain text ({how})"


TASK = Task(
    info=task_info("pretrain"),
    prepare_data=prepare_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    save_final=save_final,
    load_for_eval=load_for_eval,
    measure_fit=measure_fit,
    trained_data_settings=no_trained_settings,
    recommend_epochs=recommend_epochs,
    preview_label=no_label,
)
