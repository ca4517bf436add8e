"""Prompt data for learning from rewards (task reward): rows -> PromptRecord -> prompt token ids.

A row gives its prompt as a `prompt` column (text, or a list of messages), as `messages` (the
turns up to the last user turn), as alpaca's `instruction` (+ `input`), or through
`reward.prompt_template`, a format string over the row's columns (`Review: {text}`). Every other
column stays on the record and reaches the reward functions by name, as in TRL (a reference
answer, a label, tools). Prompts are rendered through the chat template with the generation
prompt; the answers sampled from them are never re-tokenised (train/rollout.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunesmith.data.formats import (
    PromptRecord,
    _normalize_messages,
    apply_field_mapping,
    check_field_mapping,
    normalize_tools,
)
from tunesmith.data.load import ErrorPolicy, Source, iter_rows
from tunesmith.data.templates import ChatTemplate, encode_prompt
from tunesmith.data.tokenize import TokenizeStats
from tunesmith.errors import UserError

PROMPT_COLUMNS = ("prompt", "messages", "instruction")  # where a row's prompt is read from, in order


@dataclass
class PromptStats(TokenizeStats):
    """Counts of the prompts (the data line, summary.json's `data`, the data doctor)."""

    num_over_budget: int = 0  # prompts longer than data.max_seq_len less the completion budget: left out
    num_duplicates: int = 0  # prompts rendered identically to an earlier one
    num_leaked: int = 0  # held-out prompts that are also training prompts
    over_budget_sources: list[str] = field(default_factory=list)

    EXAMPLES: ClassVar[str] = "prompts"
    SUPERVISED: ClassVar[str] = "prompt"

    def summary(self) -> str:
        parts = [f"{self.num_examples} {self.EXAMPLES}", f"{self.num_tokens:,} prompt tokens"]
        if self.num_over_budget:
            parts.append(f"{self.num_over_budget} over the length budget (left out)")
        if self.num_duplicates:
            parts.append(f"{self.num_duplicates} duplicates")
        if self.num_leaked:
            parts.append(f"{self.num_leaked} also in the training prompts")
        return ", ".join(parts)


@dataclass
class PromptExample:
    """A prompt ready to sample from: its token ids (generation prompt included) and its record."""

    prompt_ids: list[int]
    record: PromptRecord

    @property
    def source(self) -> str:
        return str(self.record.source)


def _prompt_messages(row: dict[str, Any], template: str | None, source: Source) -> list[dict[str, Any]]:
    if template is not None:
        try:
            return [{"role": "user", "content": template.format_map(row)}]
        except KeyError as exc:
            raise ValueError(
                f"{source}: config key `reward.prompt_template` names the column {exc} the row does not have "
                f"(columns: {', '.join(sorted(row))})"
            ) from None
        except (ValueError, IndexError) as exc:
            raise UserError(
                f"config key `reward.prompt_template`: not a valid format string ({exc})"
            ) from None
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str) and prompt.strip():
            return [{"role": "user", "content": prompt}]
        return _normalize_messages(prompt, source, "role", "content", sharegpt=False, needs_answer=False)
    if "messages" in row:
        messages = _normalize_messages(
            row["messages"], source, "role", "content", sharegpt=False, needs_answer=False
        )
        while messages and messages[-1]["role"] == "assistant":  # the reference answer is not the prompt
            messages.pop()
        if not messages:
            raise ValueError(f"{source}: `messages` holds no turn before the answer")
        return messages
    if "instruction" in row and isinstance(row["instruction"], str):
        extra = row.get("input") or ""
        return [
            {"role": "user", "content": f"{row['instruction']}\n\n{extra}" if extra else row["instruction"]}
        ]
    raise ValueError(
        f"{source}: no prompt in the fields {sorted(row)}; give a `prompt` column (text or messages), map yours "
        "with data.fields.prompt=<column>, or build it with reward.prompt_template: '... {column} ...'"
    )


def to_prompt_record(
    row: dict[str, Any], source: Source, template: str | None = None, system_prompt: str | None = None
) -> PromptRecord:
    """One row as a prompt and its other columns; raises ValueError naming file:line on bad content."""
    messages = _prompt_messages(row, template, source)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    tools = normalize_tools(row.get("tools"), source)
    columns = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
    return PromptRecord(messages, columns, source, tools)


def load_prompts(
    spec: str | list[str],
    fields: dict[str, str],
    template: str | None,
    system_prompt: str | None,
    policy: ErrorPolicy,
    what: str = "data.train",
) -> list[PromptRecord]:
    """Every row of `spec` as a PromptRecord; an empty result is an error."""
    records: list[PromptRecord] = []
    for number, (row, source) in enumerate(iter_rows(spec, policy, what)):
        if number == 0:
            check_field_mapping(row, fields, source)
        try:
            records.append(
                to_prompt_record(apply_field_mapping(row, fields), source, template, system_prompt)
            )
        except ValueError as exc:
            policy.bad(str(exc))
    if not records:
        shown = spec if isinstance(spec, str) else ", ".join(spec)
        raise UserError(f"{what}: no usable prompts in {shown}; the data is empty")
    return records


def tokenize_prompts(
    records: list[PromptRecord], tokenizer: Any, template: ChatTemplate, max_prompt_tokens: int
) -> tuple[list[PromptExample], PromptStats]:
    """Prompt token ids through the chat template; prompts over the budget are left out and counted."""
    stats = PromptStats(num_records=len(records))
    examples: list[PromptExample] = []
    seen: Counter[tuple[int, ...]] = Counter()
    for record in records:
        ids = encode_prompt(tokenizer, template, record.prompt, record.tools)
        if len(ids) > max_prompt_tokens:
            stats.num_over_budget += 1
            stats.over_budget_sources.append(str(record.source))
            continue
        seen[tuple(ids)] += 1
        stats.num_duplicates += seen[tuple(ids)] > 1
        stats.num_tokens += len(ids)
        stats.num_supervised_tokens += len(ids)
        examples.append(PromptExample(ids, record))
    stats.num_examples = len(examples)
    return examples, stats


def count_leaked(train: list[PromptExample], held_out: list[PromptExample]) -> int:
    """Held-out prompts that are also training prompts (same token ids): they flatter the after-score."""
    train_prompts = {tuple(e.prompt_ids) for e in train}
    return sum(tuple(e.prompt_ids) in train_prompts for e in held_out)
