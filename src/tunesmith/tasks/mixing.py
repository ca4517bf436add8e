"""Training records from data.train's sources, mixed by weight (data/mix.py), and the held-out split.

The tasks that read records (instruct, classify, preference) share this: each source is loaded
with its own format and fields; when data.eval is empty the held-out share comes from the first
source (the user's own data: the task's metrics measure it, not the general text mixed in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tunesmith.data.mix import SourceMix, describe, mix_items
from tunesmith.errors import UserError
from tunesmith.tasks import hold_out

if TYPE_CHECKING:
    from tunesmith.config import Config, TrainSource

Item = TypeVar("Item")


@dataclass
class MixedRecords:
    train: list[Any]  # the mixed training records
    eval: list[Any] | None  # held out of the first source (None when data.eval is given)
    mix: list[SourceMix] | None  # per source: what it holds and what the mix takes (None: one source)
    origin: dict[str, int]  # record source (file:line) -> the index of the mix source it came from


def source_what(index: int, num_sources: int) -> str:
    """How messages name a source: data.train, or data.train[i] in a mix."""
    return "data.train" if num_sources == 1 else f"data.train[{index}]"


def load_mixed(
    config: Config, missing: str, load: Callable[[TrainSource, str], Sequence[Item]]
) -> MixedRecords:
    """Every source through `load(source, what)`, the held-out share (no data.eval), then the mix."""
    data = config.data
    sources = data.train_sources()
    if not sources:
        raise UserError(f"config key `data.train` is missing; {missing}")
    per_source = [list(load(source, source_what(i, len(sources)))) for i, source in enumerate(sources)]
    held: list[Any] | None = None
    if data.eval is None:
        per_source[0], held = hold_out(
            per_source[0], data.eval_fraction, data.max_eval_examples, config.train.seed
        )
    if len(sources) == 1:
        return MixedRecords(per_source[0], held, None, {})
    weights = [source.weight for source in sources]
    train: list[Any]
    train, origin = mix_items(per_source, weights, config.train.seed)
    mix = describe([s.label() for s in sources], weights, [len(items) for items in per_source])
    by_record = {str(record.source): index for record, index in zip(train, origin, strict=True)}
    return MixedRecords(train, held, mix, by_record)


def source_of_examples(examples: Sequence[Any], origin: dict[str, int]) -> Callable[[int], int] | None:
    """Train example index -> mix source index (examples keep their record's file:line)."""
    if not origin:
        return None
    return lambda index: origin.get(examples[index].source, 0)
