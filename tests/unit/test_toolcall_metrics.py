"""Tool-call metrics: parsing the call out of a reply and the three shares."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import Conversation
from tunesmith.evaluate.toolcalls import ToolCallTurn, parse_tool_call, tool_call_metrics, tool_call_turns


@pytest.mark.parametrize(
    ("text", "call"),
    [
        (
            '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
            {"name": "f", "arguments": {"a": 1}},
        ),
        ('Sure. {"name": "f", "parameters": {"a": [1, 2]}}', {"name": "f", "arguments": {"a": [1, 2]}}),
        ('{"name": "f", "arguments": "{\\"a\\": 1}"}', {"name": "f", "arguments": {"a": 1}}),
        ('{"x": {"name": 3}} then {"name": "g"}', {"name": "g", "arguments": {}}),
        ('<tool_call>{"name": "f", "arguments": {"a": 1}', None),  # cut off: not well-formed
        ("I cannot call tools.", None),
        ('{"name": "f", "arguments": [1]}', None),
    ],
)
def test_parse_tool_call(text, call):
    assert parse_tool_call(text) == call


def turn(name: str, arguments: dict) -> ToolCallTurn:
    return ToolCallTurn([], None, name, arguments, "t.jsonl:1")


def test_metrics_compare_arguments_as_objects():
    turns = [turn("f", {"a": 1, "b": "x"}), turn("f", {"a": 1}), turn("g", {}), turn("h", {"q": 2})]
    replies = [
        '{"name": "f", "arguments": {"b": "x", "a": 1}}',  # same object, other key order: exact
        '{"name": "f", "arguments": {"a": 2}}',  # right name, wrong value
        '{"name": "f", "arguments": {}}',  # wrong name
        "no call here",
    ]
    assert tool_call_metrics(replies, turns) == {
        "tool_call_turns": 4,
        "tool_call_well_formed": 0.75,
        "tool_call_name": 0.5,
        "tool_call_arguments": 0.25,
    }
    assert tool_call_metrics([], []) == {}


def test_turns_are_the_assistant_calls_with_their_history():
    call = {"type": "function", "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "r", "tool_call_id": "c"},
        {"role": "assistant", "content": "done"},
    ]
    (found,) = tool_call_turns(
        [Conversation(messages, tools=[{"type": "function", "function": {"name": "f"}}])]
    )
    assert found.messages == messages[:1] and found.name == "f" and found.arguments == {"a": 1}
    assert found.tools[0]["function"]["name"] == "f"
