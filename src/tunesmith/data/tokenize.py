"""Tokenizing canonical records into examples: `input_ids` + `labels` (LM) or `input_ids` + `label`.

Truncation is counted and reported; a sample that loses all its supervised tokens to
truncation is dropped and counted, never trained as all IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunesmith.data.formats import Conversation
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.templates import IGNORE_INDEX, ChatTemplate, encode_conversations
from tunesmith.errors import UserError


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int] | None = None  # LM tasks: IGNORE_INDEX where not trained
    label: Any = None  # classify: class index, or a multi-hot list
    source: str = ""
    token_type_ids: list[int] | None = None  # classify: segment ids of encoder text pairs

    @property
    def num_supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX) if self.labels is not None else 1


@dataclass
class TokenizeStats:
    num_records: int = 0
    num_examples: int = 0
    num_tokens: int = 0
    num_supervised_tokens: int = 0
    num_truncated: int = 0
    num_dropped_no_supervised: int = 0
    dropped_sources: list[str] = field(default_factory=list)

    # How the data line names what was counted (preference pairs reuse these counts with their nouns).
    EXAMPLES: ClassVar[str] = "examples"
    SUPERVISED: ClassVar[str] = "trained"
    DROPPED: ClassVar[str] = "truncation cut every trained token"

    def summary(self) -> str:
        parts = [
            f"{self.num_examples} {self.EXAMPLES}",
            f"{self.num_tokens:,} tokens ({self.num_supervised_tokens:,} {self.SUPERVISED})",
        ]
        if self.num_truncated:
            parts.append(f"{self.num_truncated} truncated")
        if self.num_dropped_no_supervised:
            parts.append(f"{self.num_dropped_no_supervised} dropped: {self.DROPPED}")
        return ", ".join(parts)


# A record longer than this many characters per token of data.max_seq_len (and over 1M
# characters) cannot fit the sequence: it is refused with file:line before the tokenizer builds
# per-token structures for it (one 50 MB record took GBs there).
MAX_CHARS_PER_TOKEN = 64
MIN_RECORD_CHAR_LIMIT = 1_000_000


def record_char_limit(max_seq_len: int) -> int:
    return max(MIN_RECORD_CHAR_LIMIT, MAX_CHARS_PER_TOKEN * max_seq_len)


def check_record_size(
    source: Any, num_chars: int, max_seq_len: int, policy: ErrorPolicy | None = None
) -> bool:
    """Whether a record may be tokenized: one far longer than data.max_seq_len could ever hold is
    refused naming it, or (data.on_error: skip, through `policy`) skipped and counted."""
    limit = record_char_limit(max_seq_len)
    if num_chars <= limit:
        return True
    message = (
        f"{source}: a record of {num_chars:,} characters, over the limit of {limit:,} for "
        f"data.max_seq_len={max_seq_len} (it would be cut to {max_seq_len} tokens); split or remove it"
    )
    if policy is None:
        raise UserError(message)
    policy.bad(message)
    return False


def tokenize_conversations(
    records: list[Conversation],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    what: str = "data.train",
    train_on_reasoning: bool = False,
    policy: ErrorPolicy | None = None,
) -> tuple[list[Example], TokenizeStats]:
    """Examples of every record: one per conversation, or one per assistant turn for templates that
    rewrite history (see templates.conversation_samples); all keep the record's file:line.
    `policy` (data.on_error) decides whether an oversized record stops the run or is skipped."""
    stats = TokenizeStats(num_records=len(records))
    examples = []
    for record in records:
        num_chars = sum(len(str(m.get("content") or "")) for m in record.messages)
        if not check_record_size(record.source, num_chars, max_seq_len, policy):
            continue
        samples = encode_conversations(
            tokenizer, template, record.messages, getattr(record, "tools", None), train_on_reasoning
        )
        for input_ids, labels in samples:
            if len(input_ids) > max_seq_len:
                stats.num_truncated += 1
                input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
            example = Example(input_ids, labels, source=str(record.source))
            if example.num_supervised == 0:
                stats.num_dropped_no_supervised += 1
                if len(stats.dropped_sources) < 5:
                    stats.dropped_sources.append(example.source)
                continue
            examples.append(example)
            stats.num_tokens += len(input_ids)
            stats.num_supervised_tokens += example.num_supervised
    stats.num_examples = len(examples)
    if not examples:
        raise UserError(
            f"{what}: every sample lost all its assistant tokens to truncation at data.max_seq_len={max_seq_len} "
            f"(e.g. {', '.join(stats.dropped_sources)}); raise data.max_seq_len or shorten the prompts"
        )
    return examples, stats
