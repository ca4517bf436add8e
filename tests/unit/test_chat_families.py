"""Every real chat template in ../shared/chat_templates: the trained spans are exactly the
assistant's content (or its calls, or its reasoning when asked) plus the end-of-turn token."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.formats import normalize
from tunesmith.data.load import Source
from tunesmith.data.preview import trained_spans
from tunesmith.data.templates import encode_conversations, resolve_chat_template
from tunesmith.errors import UserError

from .chat_families import SPECIAL, families, family_tokenizer

# The token that ends an assistant reply, per family (the last turn of gpt-oss ends with <|return|>).
END = {family: eos for family, (_, eos) in SPECIAL.items()}
END.update({"phi3_5": "<|end|>", "gemma3": "<end_of_turn>"})
REASONING = ("qwen3", "qwen3_5_think", "deepseekv3", "gptoss")  # families that render a think block
TOOLS = (
    "qwen2_5",
    "qwen3",
    "qwen3_5_think",
    "qwen3_5_nothink",
    "qwen3_instruct_2507",
    "llama3_1",
    "llama3_2",
)
TOOLS += ("deepseekv3", "gptoss")
NO_TOOLS = sorted(set(SPECIAL) - set(TOOLS))

SYSTEM, USER_1, USER_2 = "You are terse.", "Say hi.", "Now say bye."
REPLY_1, REPLY_2 = "Hi there.", "Bye for now."
THOUGHT_1, THOUGHT_2 = "They want a greeting.", "A farewell is asked."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_RESULT = '{"temperature_c": 21}'


def spans(family, messages, tools=None, train_on_reasoning=False) -> list[list[str]]:
    """Per sample, the decoded trained spans."""
    tokenizer = family_tokenizer(family)
    template = resolve_chat_template(tokenizer)
    return [
        trained_spans(tokenizer, ids, labels)
        for ids, labels in encode_conversations(tokenizer, template, messages, tools, train_on_reasoning)
    ]


def flat(samples: list[list[str]]) -> list[str]:
    return [span for sample in samples for span in sample]


def test_every_template_has_a_test_tokenizer():
    assert families() == sorted(SPECIAL)


@pytest.mark.parametrize("family", families())
def test_single_turn(family):
    messages = [{"role": "user", "content": USER_1}, {"role": "assistant", "content": REPLY_1}]
    assert spans(family, messages) == [[REPLY_1 + END[family]]]


@pytest.mark.parametrize("family", families())
def test_multi_turn_with_system(family):
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER_1},
        {"role": "assistant", "content": REPLY_1},
        {"role": "user", "content": USER_2},
        {"role": "assistant", "content": REPLY_2},
    ]
    samples = spans(family, messages)
    # Templates that rewrite history train one sample per turn; the others one sample.
    assert flat(samples) == [REPLY_1 + END[family], REPLY_2 + END[family]]
    assert len(samples) in (1, 2)


def _reasoning_conversation():
    return [
        {"role": "user", "content": USER_1},
        {"role": "assistant", "content": REPLY_1, "reasoning_content": THOUGHT_1, "thinking": THOUGHT_1},
        {"role": "user", "content": USER_2},
        {"role": "assistant", "content": REPLY_2, "reasoning_content": THOUGHT_2, "thinking": THOUGHT_2},
    ]


@pytest.mark.parametrize("family", REASONING)
def test_reasoning_is_context_unless_asked(family):
    # Each turn is rendered with its own history, its reasoning visible, only the reply trained.
    assert spans(family, _reasoning_conversation()) == [[REPLY_1 + END[family]], [REPLY_2 + END[family]]]


@pytest.mark.parametrize("family", REASONING)
def test_reasoning_trained_when_asked(family):
    samples = spans(family, _reasoning_conversation(), train_on_reasoning=True)
    assert len(samples) == 2
    for (span,), thought, reply in zip(samples, (THOUGHT_1, THOUGHT_2), (REPLY_1, REPLY_2), strict=True):
        assert thought in span and span.endswith(reply + END[family])
        # from the reasoning on (gpt-oss: from the channel name the model writes after its header)
        assert span.split(thought)[0] in ("", "analysis<|message|>")
        assert USER_1 not in span and "user" not in span


@pytest.mark.parametrize("family", ("qwen3", "qwen3_5_think", "qwen3_5_nothink"))
def test_empty_think_block_is_never_trained(family):
    messages = [{"role": "user", "content": USER_1}, {"role": "assistant", "content": REPLY_1}]
    tokenizer = family_tokenizer(family)
    template = resolve_chat_template(tokenizer)
    ((ids, labels),) = encode_conversations(tokenizer, template, messages, train_on_reasoning=True)
    assert "<think>" in tokenizer.decode(ids)
    assert trained_spans(tokenizer, ids, labels) == [REPLY_1 + END[family]]


def _tool_conversation():
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": TOOL_RESULT, "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]


@pytest.mark.parametrize("family", TOOLS)
def test_tool_calls_trained_results_and_schemas_not(family):
    trained = flat(spans(family, _tool_conversation(), tools=[WEATHER]))
    assert len(trained) == 2
    call, answer = trained
    assert "get_weather" in call and "Paris" in call
    assert call.endswith(("<|call|>", "<|im_end|>", "<|eot_id|>", "<｜end▁of▁sentence｜>"))
    assert answer == "It is 21 degrees." + END[family]
    for never in ("temperature_c", "Current weather", SYSTEM, "Weather in Paris"):
        assert never not in call + answer


@pytest.mark.parametrize("family", NO_TOOLS)
def test_templates_without_tools_say_so(family):
    with pytest.raises(UserError, match="no tool support"):
        spans(family, _tool_conversation(), tools=[WEATHER])


@pytest.mark.parametrize("family", ("qwen2_5", "gptoss", "qwen3"))
def test_weight_zero_keeps_a_turn_out_of_the_loss(family):
    messages = [
        {"role": "user", "content": USER_1},
        {"role": "assistant", "content": REPLY_1, "weight": 0},
        {"role": "user", "content": USER_2},
        {"role": "assistant", "content": REPLY_2},
    ]
    assert flat(spans(family, messages)) == [REPLY_2 + END[family]]


def test_nothink_template_with_reasoning_data_is_a_clear_error():
    with pytest.raises(UserError, match="generation prompt.*data.chat_template"):
        spans("qwen3_5_nothink", _reasoning_conversation())


def test_sharegpt_tool_calls_from_glaive(shared_dir):
    path = shared_dir / "datasets" / "glaive_toolcall_en_demo" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:40]]
    row = next(r for r in rows if any(t["from"] == "function_call" for t in r["conversations"]))
    (record,) = list(normalize([(row, Source(str(path), 1))], "conversation"))
    assert record.tools and record.tools[0]["type"] == "function"
    calls = [m for m in record.messages if m.get("tool_calls")]
    expected = json.loads(next(t["value"] for t in row["conversations"] if t["from"] == "function_call"))
    assert calls[0]["tool_calls"][0]["function"] == {
        "name": expected["name"],
        "arguments": expected["arguments"],
    }
    assert any(
        m["role"] == "tool" and m["tool_call_id"] == calls[0]["tool_calls"][0]["id"] for m in record.messages
    )
    trained = flat(spans("qwen2_5", record.messages, record.tools))
    observation = next(t["value"] for t in row["conversations"] if t["from"] == "observation")
    assert any(expected["name"] in span for span in trained)
    assert not any(observation[:30] in span for span in trained)
    assert len(trained) == sum(1 for m in record.messages if m["role"] == "assistant")


def test_openai_tool_calls_with_string_arguments():
    row = {"messages": _tool_conversation(), "tools": [WEATHER]}
    row["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    (record,) = list(normalize([(row, Source("t.jsonl", 3))], "conversation"))
    assert record.messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "assistant", "content": "x", "weight": 0.5}, "weight"),
        ({"role": "user", "content": "x", "weight": 0}, "assistant messages only"),
        (
            {"role": "assistant", "content": "", "tool_calls": ['{"name": "f", "arguments": "[1]"}']},
            "JSON object",
        ),
    ],
)
def test_bad_messages_name_the_line(message, error):
    row = {"messages": [{"role": "user", "content": "hi"}, message, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(UserError, match=f"t.jsonl:9.*{error}"):
        list(normalize([(row, Source("t.jsonl", 9))], "conversation"))


def test_chat_template_from_a_jinja_file(tmp_path, shared_dir):
    tokenizer = family_tokenizer("qwen2_5")
    path = shared_dir / "chat_templates" / "phi3_5.jinja"
    template = resolve_chat_template(tokenizer, str(path))
    assert template.template == path.read_text() and str(path) in template.origin
    with pytest.raises(UserError, match="data.chat_template"):
        resolve_chat_template(tokenizer, str(tmp_path / "missing.jinja"))


def test_data_doctor_counts_a_bare_tool_call_as_words():
    from tunesmith.data.doctor.scan import record_texts
    from tunesmith.data.formats import Conversation

    _, _, turns = record_texts(Conversation(_tool_conversation(), tools=[WEATHER]))
    assert all(text.strip() for _, text in turns)
    assert "get_weather" in turns[2][1] and "Paris" in turns[2][1]
