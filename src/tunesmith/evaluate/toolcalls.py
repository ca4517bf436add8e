"""Tool-call metrics: on held-out turns where the reference is a tool call, the share where the
model's reply holds a well-formed call, calls the right function, and passes exactly the right
arguments (parsed JSON, compared as objects, so key order and spacing do not matter).

The call is read from the reply as its first JSON object with a `name` (and `arguments` or
`parameters`): the form of ChatML/Qwen `<tool_call>{...}</tool_call>`, Llama 3's bare JSON and
glaive's data. Templates with their own call syntax (gpt-oss, DeepSeek) are not parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.data.formats import Conversation

_DECODER = json.JSONDecoder()


@dataclass
class ToolCallTurn:
    """A held-out turn whose reference is a call: the conversation before it, the tools, the call."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    name: str
    arguments: dict[str, Any]
    source: str


def parse_tool_call(text: str) -> dict[str, Any] | None:
    """{"name", "arguments"} of the first call in `text`, or None when it holds no well-formed call."""
    position = text.find("{")
    while position != -1:
        try:
            value, _ = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", value.get("parameters", {}))
            if isinstance(arguments, str):  # some models write the arguments as a JSON string
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    return None
            return {"name": value["name"], "arguments": arguments} if isinstance(arguments, dict) else None
        position = text.find("{", position + 1)
    return None


def tool_call_turns(records: list[Conversation], max_turns: int | None = None) -> list[ToolCallTurn]:
    """Every assistant turn with a tool call in `records` (its first call is the reference)."""
    turns = []
    for record in records:
        for index, message in enumerate(record.messages):
            if message["role"] == "assistant" and message.get("tool_calls"):
                call = message["tool_calls"][0]["function"]
                turns.append(
                    ToolCallTurn(
                        record.messages[:index],
                        record.tools,
                        call["name"],
                        call["arguments"],
                        str(record.source),
                    )
                )
                if max_turns is not None and len(turns) >= max_turns:
                    return turns
    return turns


def tool_call_metrics(replies: list[str], turns: list[ToolCallTurn]) -> dict[str, float | int]:
    """Shares of `turns` whose reply has a well-formed call, the right name, the exact arguments."""
    if not turns:
        return {}
    well_formed = right_name = right_arguments = 0
    for reply, turn in zip(replies, turns, strict=True):
        call = parse_tool_call(reply)
        if call is None:
            continue
        well_formed += 1
        if call["name"] == turn.name:
            right_name += 1
            right_arguments += call["arguments"] == turn.arguments
    count = len(turns)
    return {
        "tool_call_turns": count,
        "tool_call_well_formed": well_formed / count,
        "tool_call_name": right_name / count,
        "tool_call_arguments": right_arguments / count,
    }


def evaluate_tool_calls(
    model: Any,
    tokenizer: Any,
    template: Any,
    records: list[Conversation],
    max_turns: int = 50,
    max_new_tokens: int = 96,
) -> dict[str, Any]:
    """Generate (greedy) at each held-out call turn and score the replies; {} when there is none."""
    from tunesmith.evaluate.generation import generate_reply

    turns = tool_call_turns(records, max_turns)
    replies = [
        generate_reply(model, tokenizer, template, turn.messages, max_new_tokens, tools=turn.tools)
        for turn in turns
    ]
    metrics: dict[str, Any] = dict(tool_call_metrics(replies, turns))
    if turns:
        metrics["tool_call_examples"] = [
            {"source": t.source, "reference": {"name": t.name, "arguments": t.arguments}, "output": r}
            for t, r in zip(turns[:5], replies[:5], strict=True)
        ]
    return metrics
