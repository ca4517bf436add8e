"""Record formats: detect them, and convert every row into one canonical record.

Canonical records (DESIGN.md): `TextRecord`, `Conversation`, `LabeledText`, `PreferencePair`
(its formats are read in data/preference.py). Each keeps its
`source` (file:line) so any later problem can be reported where the user can fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.load import ErrorPolicy, Source
from tunesmith.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "function_call": "assistant",  # LLaMA-Factory / glaive: an assistant turn that calls a tool
    "observation": "tool",  # ... and the tool's result
    "tool": "tool",
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
# The fields each format needs, for detection and for the "missing field" message.
FORMAT_FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "labeled": ("text", "label"),
    "trl": ("prompt", "chosen", "rejected"),
    "openai": ("input", "preferred_output", "non_preferred_output"),
    "prompt": ("prompt",),
}
# The formats of each kind of canonical record (a task's Task.record_kind names one).
KIND_FORMATS = {
    "conversation": ("messages", "sharegpt", "alpaca", "prompt_completion"),
    "text": ("text",),
    "labeled": ("labeled",),
    # Pairs are read by data/preference.py (its PAIR_FORMATS; sharegpt there: conversations + chosen/rejected).
    "preference": ("trl", "sharegpt", "openai"),
    # Prompts to sample answers for (task reward) are read by data/prompts.py.
    "prompt": ("prompt",),
}


@dataclass
class TextRecord:
    text: str
    source: Source = field(default_factory=lambda: Source("<memory>"))


@dataclass
class Conversation:
    """Messages as chat templates take them: `role`, `content` (a string, empty for a bare tool call),
    and where given `reasoning_content` (also as `thinking`), `tool_calls`
    ([{type, id, function: {name, arguments: dict}}]), `tool_call_id`/`name` (tool results) and
    `weight` (0 keeps an assistant turn out of the loss)."""

    messages: list[dict[str, Any]]
    source: Source = field(default_factory=lambda: Source("<memory>"))
    tools: list[dict[str, Any]] | None = None  # function schemas, OpenAI form {type, function}

    def tool_names(self) -> list[str]:
        """The functions `tools` declares."""
        return [tool["function"]["name"] for tool in self.tools or []]

    def undeclared_tool_calls(self) -> list[str]:
        """The functions the assistant calls that `tools` does not declare (each once, in order)."""
        declared = set(self.tool_names())
        called = [call["function"]["name"] for m in self.messages for call in m.get("tool_calls") or []]
        return list(dict.fromkeys(name for name in called if name not in declared))


@dataclass
class LabeledText:
    text: str
    label: Any  # str, int, or a list of those for multi-label
    text_pair: str | None = None
    source: Source = field(default_factory=lambda: Source("<memory>"))


@dataclass
class PreferencePair:
    prompt: list[dict[str, str]]  # the turns before the reply (system/user/assistant)
    chosen: list[dict[str, str]]  # the better reply: one (or more) assistant turns
    rejected: list[dict[str, str]]  # the worse reply
    source: Source = field(default_factory=lambda: Source("<memory>"))


@dataclass
class PromptRecord:
    """A prompt to sample answers for (task reward): its turns, and every other column of its row,
    which reach the reward functions by name (a reference answer, a label, tools ...)."""

    prompt: list[dict[str, Any]]  # the turns before the answer (system/user/assistant/tool)
    columns: dict[str, Any] = field(default_factory=dict)
    source: Source = field(default_factory=lambda: Source("<memory>"))
    tools: list[dict[str, Any]] | None = None  # function schemas, OpenAI form {type, function}


Record = TextRecord | Conversation | LabeledText | PreferencePair | PromptRecord
RECORD_KINDS: dict[type, str] = {
    Conversation: "conversation",
    TextRecord: "text",
    LabeledText: "labeled",
    PreferencePair: "preference",
    PromptRecord: "prompt",
}


def message_text(message: dict[str, Any]) -> str:
    """A message's words for scanning and counting: its content, then its tool calls as JSON."""
    calls = [json.dumps(call["function"], ensure_ascii=False) for call in message.get("tool_calls") or []]
    return "\n".join(part for part in (message["content"], *calls) if part)


def apply_field_mapping(row: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """Rename the user's columns to canonical names: fields = {canonical: user_column}."""
    if not fields:
        return row
    mapped = dict(row)
    for canonical, column in fields.items():
        if column in row:
            mapped[canonical] = row[column]
    return mapped


def check_field_mapping(row: dict[str, Any], fields: dict[str, str], source: Source) -> None:
    """A mapping whose column the first row lacks, where the row has no column of the canonical name
    either, is a typo: name it, rather than let format detection fail on the unmapped columns. (A
    row that already has the canonical column is readable: rows of several shapes map where they can.)"""
    missing = {
        canonical: column
        for canonical, column in fields.items()
        if column not in row and canonical not in row
    }
    if missing:
        named = ", ".join(f"{canonical} = `{column}`" for canonical, column in missing.items())
        raise UserError(
            f"{source}: the field mapping ({named}) names a column this row does not have; its columns are "
            f"{', '.join(sorted(row))}. Fix data.fields (or the source's fields)"
        )


def detect_format(row: dict[str, Any], kind: str, source: Source) -> str:
    """The format of a row meant to become a `kind` record (see KIND_FORMATS)."""
    keys = set(row)
    for name in KIND_FORMATS[kind]:
        if name == "messages" and "messages" in keys:
            messages = row["messages"]
            if (
                isinstance(messages, list)
                and messages
                and isinstance(messages[0], dict)
                and "from" in messages[0]
            ):
                return "sharegpt"
            return "messages"
        if all(f in keys for f in FORMAT_FIELDS[name]):
            return name
    if kind == "conversation" and "conversations" in keys:
        return "sharegpt"
    expected = " or ".join("+".join(FORMAT_FIELDS[n]) for n in KIND_FORMATS[kind])
    raise UserError(
        f"{source}: cannot tell the {kind} data format from the fields {sorted(keys)}; expected {expected}. "
        "Rename your columns with data.fields (e.g. data.fields.output=answer) or set data.format"
    )


def _require_str(value: Any, name: str, source: Source, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{source}: field `{name}` must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{source}: field `{name}` is empty")
    return value


def _json_value(value: Any, what: str, source: Source) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{source}: {what} is not valid JSON ({exc.msg}); write it as a JSON object"
            ) from None
    return value


def normalize_tools(raw: Any, source: Source) -> list[dict[str, Any]] | None:
    """`tools` as a list of OpenAI-form schemas {type: function, function: {...}} (a JSON string is fine)."""
    if raw in (None, "", []):
        return None
    tools = _json_value(raw, "`tools`", source)
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"{source}: `tools` must be a list of function schemas")
    normalized = []
    for tool in tools:
        schema = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise ValueError(f"{source}: every tool in `tools` needs a `name` (got {sorted(tool)})")
        normalized.append({"type": "function", "function": schema})
    return normalized


def _tool_call(raw: Any, index: int, source: Source) -> dict[str, Any]:
    call = _json_value(raw, f"message {index}'s tool call", source)
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"{source}: message {index}: a tool call needs a function `name` and `arguments`")
    arguments = _json_value(function.get("arguments", {}), f"message {index}'s tool-call arguments", source)
    if not isinstance(arguments, dict):
        raise ValueError(f"{source}: message {index}: tool-call arguments must be a JSON object")
    return {
        "type": "function",
        "id": call.get("id") or f"call_{index}",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _normalize_messages(
    raw: Any, source: Source, role_key: str, content_key: str, sharegpt: bool, needs_answer: bool = True
) -> list[dict[str, Any]]:
    """`needs_answer`: an assistant turn to train on is required (false for prompts, task reward)."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: `messages` must be a non-empty list of {{role, content}} objects")
    messages: list[dict[str, Any]] = []
    last_call: dict[str, Any] | None = None
    for index, message in enumerate(raw):
        has_calls = isinstance(message, dict) and bool(message.get("tool_calls"))
        if (
            not isinstance(message, dict)
            or role_key not in message
            or (content_key not in message and not has_calls)
        ):
            raise ValueError(
                f"{source}: message {index} must be an object with `{role_key}` and `{content_key}`"
            )
        original_role = str(message[role_key])
        role = SHAREGPT_ROLES.get(original_role.lower()) if sharegpt else original_role
        if role not in ROLES:
            valid = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
            raise ValueError(
                f"{source}: message {index} has unknown role {message[role_key]!r}; use one of {valid}"
            )
        content = message.get(content_key)
        content = "" if content is None and has_calls else content
        content = _require_str(content, f"messages[{index}].{content_key}", source, allow_empty=True)
        normalized: dict[str, Any] = {"role": role, "content": content}
        if sharegpt and original_role.lower() == "function_call":
            # The turn's value is the call itself: {"name": ..., "arguments": ...}.
            normalized["content"] = ""
            normalized["tool_calls"] = [_tool_call(content, index, source)]
        elif has_calls:
            if role != "assistant":
                raise ValueError(f"{source}: message {index}: only assistant messages make tool calls")
            normalized["tool_calls"] = [_tool_call(call, index, source) for call in message["tool_calls"]]
        if normalized.get("tool_calls"):
            last_call = normalized["tool_calls"][-1]
        if role == "tool":
            call_id = message.get("tool_call_id") or (last_call["id"] if last_call else None)
            name = message.get("name") or (last_call["function"]["name"] if last_call else None)
            normalized.update({k: v for k, v in (("tool_call_id", call_id), ("name", name)) if v})
        reasoning = message.get("reasoning_content", message.get("thinking"))
        if reasoning not in (None, "") and role == "assistant":
            reasoning = _require_str(reasoning, f"messages[{index}].reasoning_content", source)
            # Templates read one or the other (Qwen/DeepSeek `reasoning_content`, gpt-oss `thinking`).
            normalized["reasoning_content"] = normalized["thinking"] = reasoning
        if "weight" in message:
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ValueError(
                    f"{source}: message {index}: `weight` must be 0 or 1, got {message['weight']!r}"
                )
            if role != "assistant":
                raise ValueError(f"{source}: message {index}: `weight` applies to assistant messages only")
            normalized["weight"] = message["weight"]
        messages.append(normalized)
    if not needs_answer:
        return messages
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{source}: conversation has no assistant turn, so nothing to train on")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        raise ValueError(f"{source}: every assistant turn has weight 0, so nothing to train on")
    return messages


def to_record(row: dict[str, Any], fmt: str, source: Source, system_prompt: str | None = None) -> Record:
    """Convert one row of a known format; raises ValueError with file:line on bad content."""
    missing = [f for f in FORMAT_FIELDS[fmt] if f not in row]
    if missing:
        raise ValueError(
            f"{source}: missing field `{missing[0]}` for the {fmt} format (found {sorted(row)}); "
            f"map your column with data.fields.{missing[0]}=<column>"
        )
    if fmt == "messages":
        messages = _normalize_messages(row["messages"], source, "role", "content", sharegpt=False)
    elif fmt == "sharegpt":
        raw = row.get("conversations", row.get("messages"))
        messages = _normalize_messages(raw, source, "from", "value", sharegpt=True)
    elif fmt == "alpaca":
        instruction = _require_str(row["instruction"], "instruction", source)
        extra = row.get("input") or ""
        extra = _require_str(extra, "input", source, allow_empty=True)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt}]
        messages.append({"role": "assistant", "content": _require_str(row["output"], "output", source)})
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": row["system"]})
    elif fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):  # conversational prompt/completion (TRL style)
            messages = _normalize_messages(
                prompt + (completion if isinstance(completion, list) else []),
                source,
                "role",
                "content",
                sharegpt=False,
            )
        else:
            messages = [
                {"role": "user", "content": _require_str(prompt, "prompt", source)},
                {"role": "assistant", "content": _require_str(completion, "completion", source)},
            ]
    elif fmt == "text":
        return TextRecord(_require_str(row["text"], "text", source), source)
    elif fmt == "labeled":
        label = row["label"]
        if (
            label is None
            or (isinstance(label, str) and not label.strip())
            or (isinstance(label, list) and not label)
        ):
            raise ValueError(f"{source}: field `label` is empty")
        pair = row.get("text_pair")
        pair = _require_str(pair, "text_pair", source) if pair not in (None, "") else None
        return LabeledText(_require_str(row["text"], "text", source), label, pair, source)
    else:  # pragma: no cover - guarded by the config schema
        raise UserError(f"unknown data format {fmt!r}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    tools = normalize_tools(row.get("tools"), source) if fmt in ("messages", "sharegpt") else None
    return Conversation(messages, source, tools)


def normalize(
    rows: Iterable[tuple[dict[str, Any], Source]],
    kind: str,
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    system_prompt: str | None = None,
    policy: ErrorPolicy | None = None,
) -> Iterator[Record]:
    """Detect the format on the first row (unless given) and convert every row."""
    policy = policy or ErrorPolicy()
    fields = fields or {}
    if fmt != "auto" and fmt not in KIND_FORMATS[kind]:
        raise UserError(
            f"config key `data.format`: {fmt!r} does not fit this task's {kind} records; "
            f"use one of {', '.join(KIND_FORMATS[kind])}"
        )
    detected = None if fmt == "auto" else fmt
    for row, source in rows:
        if detected is None:
            check_field_mapping(row, fields, source)
        row = apply_field_mapping(row, fields)
        if detected is None:
            detected = detect_format(row, kind, source)
        try:
            yield to_record(row, detected, source, system_prompt)
        except ValueError as exc:
            policy.bad(str(exc))


def load_records(
    spec: str | list[str],
    kind: str,
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    system_prompt: str | None = None,
    policy: ErrorPolicy | None = None,
    what: str = "data.train",
) -> list[Record]:
    """Read and normalize every record; an empty result is an error."""
    from tunesmith.data.load import iter_rows

    policy = policy or ErrorPolicy()
    if fmt != "auto" and fmt not in KIND_FORMATS[kind] and "[" in what:  # a source of a mix: name it
        raise UserError(
            f"config key `{what}.format` (or `data.format`, its default): {fmt!r} does not fit this task's "
            f"{kind} records; "
            f"use one of {', '.join(KIND_FORMATS[kind])}"
        )
    records = list(normalize(iter_rows(spec, policy, what), kind, fmt, fields, system_prompt, policy))
    if not records:
        shown = spec if isinstance(spec, str) else ", ".join(spec)
        raise UserError(f"{what}: no usable records in {shown}; the data is empty")
    return records
