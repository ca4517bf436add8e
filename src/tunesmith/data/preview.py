"""Machine-readable previews of tokenized samples: what is trained, as text, so masks can be checked
by a program (`tunesmith data preview CONFIG --json`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunesmith.data.templates import IGNORE_INDEX
from tunesmith.data.tokenize import Example


def trained_spans(tokenizer: Any, input_ids: list[int], labels: list[int] | None) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    if labels is None:
        return []
    spans: list[list[int]] = []
    previous_trained = False
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained and not previous_trained:
            spans.append([])
        if trained:
            spans[-1].append(token)
        previous_trained = trained
    return [tokenizer.decode(span) for span in spans]


def sample_json(tokenizer: Any, example: Example) -> dict[str, Any]:
    """{"source": "file:line", "text": the decoded sample, "trained": [decoded trained spans]}."""
    return {
        "source": example.source,
        "text": tokenizer.decode(example.input_ids),
        "trained": trained_spans(tokenizer, example.input_ids, example.labels),
    }


def preview_samples_json(tokenizer: Any, examples: Iterable[Example]) -> list[dict[str, Any]]:
    return [sample_json(tokenizer, example) for example in examples]
