"""Mixing several training sources by weight (data.train as a list of {path, weight} sources).

One pass of the mix (an epoch) takes every example of the first source once, in order, and
from every other source `round(n_first * weight / weight_first)` examples: its examples in a
seeded order, cycled when the source is smaller than its share (a general corpus much larger
than its share is sampled, never read whole). The mix is a function of the sources and the
seed alone, so a resumed run rebuilds the same one; the row schedule then shuffles it.
`trained_counts` counts what the run actually trained on, per source, over its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

Item = TypeVar("Item")


@dataclass
class SourceMix:
    """One source of the mix: what it holds and what one pass of the mix takes from it."""

    name: str
    weight: float
    num_available: int  # training examples (records, or blocks) the source holds
    num_drawn: int  # examples of one pass of the mix taken from it
    num_trained: int = 0  # examples the run trained on (every step, repeats counted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mix_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Examples per source in one pass: all of the first, the others to their weight relative to it."""
    first = sizes[0]
    return [first] + [max(1, round(first * weight / weights[0])) for weight in weights[1:]]


def draw_order(size: int, count: int, seed: int, index: int) -> np.ndarray:
    """`count` indices into a source of `size` items: a seeded permutation, cycled (source 0: in order)."""
    if index == 0:
        return np.arange(count) % size
    permutation = np.random.default_rng([seed, index]).permutation(size)
    return permutation[np.arange(count) % size]


def mix_items(
    per_source: Sequence[Sequence[Item]], weights: Sequence[float], seed: int
) -> tuple[list[Item], list[int]]:
    """The mixed items (source by source) and the source index of each."""
    counts = mix_counts([len(items) for items in per_source], weights)
    mixed: list[Item] = []
    origin: list[int] = []
    for index, (items, count) in enumerate(zip(per_source, counts, strict=True)):
        mixed.extend(items[int(i)] for i in draw_order(len(items), count, seed, index))
        origin.extend([index] * count)
    return mixed, origin


def describe(names: Sequence[str], weights: Sequence[float], sizes: Sequence[int]) -> list[SourceMix]:
    counts = mix_counts(sizes, weights)
    return [
        SourceMix(name, float(weight), int(size), int(count))
        for name, weight, size, count in zip(names, weights, sizes, counts, strict=True)
    ]


def count_trained(schedule: Any, steps: int, prepared: Any) -> None:
    """A mix of sources: set each source's num_trained to the examples of the rows `schedule` gave steps
    0..steps-1 (resumed or not: the schedule is fixed). `prepared` (tasks.PreparedData) holds the mix
    (stats.mix), the rows (example indices) and `source_of` (example index -> source index)."""
    mix, source_of = prepared.stats.mix, prepared.source_of
    if not mix or source_of is None:
        return
    counts = [0] * len(mix)
    for step in range(steps):
        for micro in schedule.rows_for_step(step):
            for row in micro:
                for example in prepared.rows[row]:
                    counts[source_of(example)] += 1
    for source, count in zip(mix, counts, strict=True):
        source.num_trained = count


def summary(sources: Sequence[SourceMix]) -> str:
    total = sum(s.num_drawn for s in sources) or 1
    return "mix " + ", ".join(f"{s.name} {s.num_drawn:,} ({s.num_drawn / total:.0%})" for s in sources)
