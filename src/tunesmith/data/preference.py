"""Preference pairs: read the usual formats into one canonical record, and tokenize them.

Formats (detected on the first row, like data/formats.py does for the other tasks):
- `trl`: TRL's `prompt`/`chosen`/`rejected`, plain text (strings) or conversational (lists of
  {role, content}; the prompt may be a list of turns and the replies lists of assistant turns);
- `sharegpt`: `conversations` (ShareGPT turns, {from, value}) + `chosen`/`rejected` (one turn
  each, or a list), as in LLaMA-Factory's dpo_en_demo;
- `openai`: OpenAI's DPO fine-tuning format: `input.messages`, `preferred_output`,
  `non_preferred_output` (lists of assistant messages).

Every pair becomes `PreferencePair(prompt, chosen, rejected, source)`: the prompt turns and the
two replies as message lists. A plain-text prompt is the user's turn, a plain reply the
assistant's. Tokenizing renders prompt + reply with the model's chat template; only the reply's
tokens (through its end-of-turn token) are targets, so only they count in the log-probs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from tunesmith.data.formats import SHAREGPT_ROLES, PreferencePair, apply_field_mapping, check_field_mapping
from tunesmith.data.load import ErrorPolicy, Source, iter_rows
from tunesmith.data.templates import IGNORE_INDEX, ChatTemplate, assistant_spans
from tunesmith.data.tokenize import Example, TokenizeStats
from tunesmith.errors import UserError

PAIR_FORMATS = {
    "trl": ("prompt", "chosen", "rejected"),
    "sharegpt": ("conversations", "chosen", "rejected"),
    "openai": ("input", "preferred_output", "non_preferred_output"),
}
Messages = list[dict[str, str]]


@dataclass
class PairExample:
    """A tokenized pair: chosen and rejected as LM examples (targets on the reply tokens only)."""

    chosen: Example
    rejected: Example
    source: str = ""
    prompt_tokens: int = 0  # tokens of the rendered prompt (for the truncation check)
    truncated: bool = False
    reference_logps: tuple[float, float] | None = None  # cached reference (chosen, rejected) sums
    label: Any = None

    @property
    def num_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    # Previews show the chosen side.
    @property
    def input_ids(self) -> list[int]:
        return self.chosen.input_ids

    @property
    def labels(self) -> list[int] | None:
        return self.chosen.labels


# --------------------------------------------------------------------------------------------
# Formats


def detect_pair_format(row: dict[str, Any], source: Source) -> str:
    keys = set(row)
    for name, needed in PAIR_FORMATS.items():
        if all(k in keys for k in needed):
            return name
    expected = " or ".join("+".join(f) for f in PAIR_FORMATS.values())
    raise UserError(
        f"{source}: cannot tell the preference data format from the fields {sorted(keys)}; expected {expected}. "
        "Rename your columns with data.fields (e.g. data.fields.chosen=better)"
    )


def _text(value: Any, name: str, source: Source) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{source}: field `{name}` must be a string, got {type(value).__name__}")
    return value


def _messages(raw: Any, name: str, source: Source, default_role: str) -> Messages:
    """A string, one message, or a list of messages ({role, content} or ShareGPT {from, value})."""
    if isinstance(raw, str):
        return [{"role": default_role, "content": raw}]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: field `{name}` must be a string or a non-empty list of messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ValueError(f"{source}: `{name}[{index}]` must be an object with role and content")
        if "from" in message:
            role = SHAREGPT_ROLES.get(str(message["from"]).lower())
            content = message.get("value")
        else:
            role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(
                f"{source}: `{name}[{index}]` has unknown role {role!r}; use system, user or assistant"
            )
        messages.append({"role": role, "content": _text(content, f"{name}[{index}].content", source)})
    return messages


def to_pair(
    row: dict[str, Any], fmt: str, source: Source, system_prompt: str | None = None
) -> PreferencePair:
    """Convert one row of a known pair format; raises ValueError naming file:line on bad content."""
    missing = [f for f in PAIR_FORMATS[fmt] if f not in row]
    if missing:
        raise ValueError(
            f"{source}: missing field `{missing[0]}` for the {fmt} preference format (found {sorted(row)}); "
            f"map your column with data.fields.{missing[0]}=<column>"
        )
    if fmt == "trl":
        prompt = _messages(row["prompt"], "prompt", source, "user")
        chosen = _messages(row["chosen"], "chosen", source, "assistant")
        rejected = _messages(row["rejected"], "rejected", source, "assistant")
        # TRL's implicit-prompt form: chosen/rejected carry the whole conversation, prompt = shared part.
    elif fmt == "sharegpt":
        prompt = _messages(row["conversations"], "conversations", source, "user")
        chosen = _messages(row["chosen"], "chosen", source, "assistant")
        rejected = _messages(row["rejected"], "rejected", source, "assistant")
    else:
        raw_input = row["input"]
        if not isinstance(raw_input, dict) or "messages" not in raw_input:
            raise ValueError(f"{source}: field `input` must be an object with `messages` (OpenAI DPO format)")
        prompt = _messages(raw_input["messages"], "input.messages", source, "user")
        chosen = _messages(row["preferred_output"], "preferred_output", source, "assistant")
        rejected = _messages(row["non_preferred_output"], "non_preferred_output", source, "assistant")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if any(m["role"] != "assistant" for m in reply):
            raise ValueError(
                f"{source}: `{name}` must hold assistant turns only (the prompt goes in the prompt)"
            )
    if prompt[-1]["role"] == "assistant":
        raise ValueError(
            f"{source}: the prompt ends with an assistant turn; the last prompt turn must be the user's"
        )
    if system_prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": system_prompt})
    return PreferencePair(prompt, chosen, rejected, source)


def iter_pairs(
    spec: str | list[str],
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    system_prompt: str | None = None,
    policy: ErrorPolicy | None = None,
    what: str = "data.train",
) -> Iterator[PreferencePair]:
    policy = policy or ErrorPolicy()
    detected = None if fmt in ("auto", None) else fmt
    if detected is not None and detected not in PAIR_FORMATS:
        raise UserError(
            f"config key `data.format`: {fmt!r} is not a preference format; use auto or one of {', '.join(PAIR_FORMATS)}"
        )
    for row, source in iter_rows(spec, policy, what):
        if detected is None:
            check_field_mapping(row, fields or {}, source)
        row = apply_field_mapping(row, fields or {})
        if detected is None:
            detected = detect_pair_format(row, source)
        try:
            yield to_pair(row, detected, source, system_prompt)
        except ValueError as exc:
            policy.bad(str(exc))


def load_pairs(
    spec: str | list[str],
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    system_prompt: str | None = None,
    policy: ErrorPolicy | None = None,
    what: str = "data.train",
) -> list[PreferencePair]:
    pairs = list(iter_pairs(spec, fmt, fields, system_prompt, policy, what))
    if not pairs:
        shown = spec if isinstance(spec, str) else ", ".join(spec)
        raise UserError(f"{what}: no usable preference pairs in {shown}; the data is empty")
    return pairs


# --------------------------------------------------------------------------------------------
# Tokenizing


def encode_reply(
    tokenizer: Any, template: ChatTemplate, prompt: Messages, reply: Messages
) -> tuple[list[int], list[int], int]:
    """Token ids of prompt + reply, labels on the reply's assistant tokens only, and the prompt's length."""
    messages = prompt + reply
    text, spans = assistant_spans(tokenizer, template, messages)
    spans = spans[
        sum(m["role"] == "assistant" for m in prompt) :
    ]  # assistant turns inside the prompt do not count
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    prompt_tokens = len(input_ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            labels[position] = input_ids[position]
            prompt_tokens = min(prompt_tokens, position)
    return input_ids, labels, prompt_tokens


@dataclass
class PairStats(TokenizeStats):
    """The tokenizer's counts, for pairs: an example is a pair, the supervised tokens are the replies'."""

    EXAMPLES: ClassVar[str] = "pairs"
    SUPERVISED: ClassVar[str] = "reply"
    DROPPED: ClassVar[str] = "a reply lost every token to truncation"


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    what: str = "data.train",
) -> tuple[list[PairExample], PairStats]:
    """Each side cut at max_seq_len (the reply's end goes first); a side left with no reply token drops the pair."""
    stats = PairStats(num_records=len(pairs))
    examples = []
    for pair in pairs:
        sides, truncated, prompt_tokens = [], False, 0
        for reply in (pair.chosen, pair.rejected):
            input_ids, labels, prompt_tokens = encode_reply(tokenizer, template, pair.prompt, reply)
            if len(input_ids) > max_seq_len:
                truncated = True
                input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
            sides.append(Example(input_ids, labels, source=str(pair.source)))
        stats.num_truncated += truncated
        if any(side.num_supervised == 0 for side in sides):
            stats.num_dropped_no_supervised += 1
            if len(stats.dropped_sources) < 5:
                stats.dropped_sources.append(str(pair.source))
            continue
        example = PairExample(sides[0], sides[1], str(pair.source), prompt_tokens, truncated)
        examples.append(example)
        stats.num_tokens += example.num_tokens
        stats.num_supervised_tokens += sides[0].num_supervised + sides[1].num_supervised
    stats.num_examples = len(examples)
    if not examples and pairs:
        raise UserError(
            f"{what}: every pair lost its reply tokens to truncation at data.max_seq_len={max_seq_len} "
            f"(e.g. {', '.join(stats.dropped_sources)}); raise data.max_seq_len or shorten the prompts"
        )
    return examples, stats


@dataclass(frozen=True)
class PairData:
    """What the preference task carries beside PreparedData's chosen-side examples."""

    train: list[PairExample]  # the tokenized pairs the rows index
    eval: list[PairExample]
    train_records: list[PreferencePair]  # the canonical pairs behind `train` (the doctor reads them)


# --------------------------------------------------------------------------------------------
# Rows and batches


def make_pair_rows(examples: list[PairExample], max_seq_len: int, packing: bool) -> list[list[int]]:
    """One pair per row, or pairs packed best-fit into rows of 2 x max_seq_len tokens."""
    if not packing:
        return [[i] for i in range(len(examples))]
    from tunesmith.data.pack import pack_best_fit

    return pack_best_fit([e.num_tokens for e in examples], 2 * max_seq_len)


def collate_pairs(rows: list[list[int]], examples: list[PairExample], pad_id: int) -> dict[str, Any]:
    """Chosen and rejected of every pair in one batch, for one forward pass.

    Sequence k is pair k's chosen reply, sequence P + k its rejected one (P pairs in the batch).
    Unpacked rows (one pair each) become two tensor rows; packed rows one tensor row holding all
    their sequences, positions restarting per sequence (block-causal attention, as collate_rows).
    `sequence_index` marks which sequence each target position belongs to (-1 elsewhere).
    """
    import torch

    pair_ids = [i for row in rows for i in row]
    num_pairs = len(pair_ids)
    order = {i: k for k, i in enumerate(pair_ids)}
    if all(len(row) == 1 for row in rows):
        layout = [[(i, 0)] for i in pair_ids] + [[(i, 1)] for i in pair_ids]
    else:
        layout = [[(i, side) for i in row for side in (0, 1)] for row in rows]
    sequences = {
        (i, s): examples[i].chosen if s == 0 else examples[i].rejected for i in pair_ids for s in (0, 1)
    }
    width = max(sum(len(sequences[key].input_ids) for key in row) for row in layout)
    input_ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    labels = torch.full((len(layout), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(layout), width), dtype=torch.long)
    sequence_index = torch.full((len(layout), width), -1, dtype=torch.long)
    for r, row in enumerate(layout):
        offset = 0
        for i, side in row:
            example = sequences[(i, side)]
            n = len(example.input_ids)
            input_ids[r, offset : offset + n] = torch.tensor(example.input_ids)
            labels[r, offset : offset + n] = torch.tensor(example.labels)
            position_ids[r, offset : offset + n] = torch.arange(n)
            sequence_index[r, offset : offset + n] = order[i] + side * num_pairs
            offset += n
        position_ids[r, offset:] = torch.arange(width - offset)
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "sequence_index": sequence_index,
        "num_pairs": num_pairs,
        "num_targets": num_pairs,  # the loop normalises by pairs
    }
    cached = [examples[i].reference_logps for i in pair_ids]
    if all(c is not None for c in cached):
        batch["reference_logps"] = torch.tensor([c[0] for c in cached] + [c[1] for c in cached])  # type: ignore[index]
    return batch
