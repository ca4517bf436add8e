"""Packing examples into rows and rows into batches. Never looks at text.

A row holds one or more whole examples. In a batch, `position_ids` restart at 0 for every
example (and for the padding tail), and no 2D attention mask is passed: transformers then
builds a block-causal mask from the position restarts (SDPA/eager/flex) or drives varlen flash
attention, so examples packed together never attend to each other. The model must run with
`use_cache=False` for this (see NOTES.md).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.data.tokenize import Example


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: lists of example indices, each fitting `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # (free space, row index), kept sorted so the tightest row that fits is found by bisection.
    free: list[tuple[int, int]] = []
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"example of {length} tokens exceeds the row capacity {capacity}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (space - length, row))
        else:
            rows.append([index])
            bisect.insort(free, (capacity - length, len(rows) - 1))
    return rows


def make_rows(examples: Sequence[Example], max_seq_len: int, packing: bool) -> list[list[int]]:
    if not packing:
        return [[i] for i in range(len(examples))]
    return pack_best_fit([len(e.input_ids) for e in examples], max_seq_len)


def collate_rows(
    rows: Sequence[Sequence[int]], examples: Sequence[Example], pad_id: int, length: int | None = None
) -> dict[str, Any]:
    """Batch tensors for packed rows: input_ids, labels, position_ids [batch, length]."""
    row_lengths = [sum(len(examples[i].input_ids) for i in row) for row in rows]
    length = length or max(row_lengths)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            example = examples[i]
            n = len(example.input_ids)
            input_ids[r, offset : offset + n] = torch.tensor(example.input_ids)
            labels[r, offset : offset + n] = torch.tensor(example.labels)
            position_ids[r, offset : offset + n] = torch.arange(n)
            offset += n
        # The padding tail is a "document" of its own: its positions restart too, so real
        # tokens never attend to it and it carries no loss.
        position_ids[r, offset:] = torch.arange(length - offset)
    # Labels are shifted inside the loss; count the targets that will actually be scored.
    num_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_targets": num_targets,
    }


@dataclass
class RowSchedule:
    """Which rows each optimizer step uses: a deterministic function of the step number.

    Rows are visited in a fresh seeded permutation every epoch, as one endless stream; step s
    takes the next batch_size * accumulation rows. Resuming at step s therefore sees exactly
    the rows an uninterrupted run would (no skips, no repeats).
    """

    num_rows: int
    batch_size: int
    gradient_accumulation_steps: int
    seed: int
    shuffle: bool = True

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def steps_for_epochs(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.num_rows / self.rows_per_step))

    def _permutation(self, epoch: int) -> torch.Tensor:
        # Kept between steps: a multi-GB pretraining corpus has millions of rows, and drawing
        # their permutation anew every step would cost about half a second.
        cached = self.__dict__.get("_cached_permutation")
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if not self.shuffle:
            permutation = torch.arange(self.num_rows)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            permutation = torch.randperm(self.num_rows, generator=generator)
        self.__dict__["_cached_permutation"] = (epoch, permutation)
        return permutation

    def rows_for_step(self, step: int) -> list[list[int]]:
        """Row indices for each micro-batch of optimizer step `step` (0-based)."""
        start = step * self.rows_per_step
        stream: list[int] = []
        epoch, offset = divmod(start, self.num_rows)
        permutation = self._permutation(epoch)
        while len(stream) < self.rows_per_step:
            stream.append(int(permutation[offset]))
            offset += 1
            if offset == self.num_rows:
                epoch, offset = epoch + 1, 0
                permutation = self._permutation(epoch)
        return [
            stream[m * self.batch_size : (m + 1) * self.batch_size]
            for m in range(self.gradient_accumulation_steps)
        ]

    def epoch_at(self, step: int) -> float:
        return step * self.rows_per_step / self.num_rows
