"""Assistant-only masks on multi-turn conversations, for every instruction format."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunesmith.data.formats import normalize
from tunesmith.data.load import Source
from tunesmith.data.templates import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    ChatTemplate,
    encode_conversation,
    resolve_chat_template,
)

from ..conftest import ASSETS

MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "Now say bye."},
    {"role": "assistant", "content": "Bye for now."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS / "base-model")


def trained_text(tokenizer, input_ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])


def untrained_text(tokenizer, input_ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label == IGNORE_INDEX])


def test_multi_turn_trains_every_assistant_turn_and_its_end_token_only(tokenizer):
    template = resolve_chat_template(tokenizer)
    input_ids, labels = encode_conversation(tokenizer, template, MULTI_TURN)
    trained = trained_text(tokenizer, input_ids, labels)
    assert "Hi there.<|im_end|>" in trained
    assert "Bye for now.<|im_end|>" in trained
    for not_trained in ("You are terse", "Say hi", "Now say bye", "<|im_start|>", "assistant", "user"):
        assert not_trained not in trained
    untrained = untrained_text(tokenizer, input_ids, labels)
    assert "Say hi." in untrained and "Now say bye." in untrained
    assert "Hi there" not in untrained and "Bye for now" not in untrained
    # labels equal the input ids wherever they are trained (shifting happens inside the loss)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(input_ids, labels, strict=True))


ROWS_PER_FORMAT = {
    "messages": {"messages": MULTI_TURN},
    "sharegpt": {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Say hi."},
            {"from": "gpt", "value": "Hi there."},
            {"from": "human", "value": "Now say bye."},
            {"from": "gpt", "value": "Bye for now."},
        ]
    },
    "alpaca": {"instruction": "Say hi.", "input": "", "output": "Hi there.", "system": "You are terse."},
    "prompt_completion": {"prompt": "Say hi.", "completion": "Hi there."},
}


@pytest.mark.parametrize("fmt", sorted(ROWS_PER_FORMAT))
def test_each_format_is_detected_and_masked(tokenizer, fmt):
    row = ROWS_PER_FORMAT[fmt]
    (record,) = list(normalize([(row, Source("data.jsonl", 7))], "conversation"))
    assert record.source == Source("data.jsonl", 7)
    template = resolve_chat_template(tokenizer)
    input_ids, labels = encode_conversation(tokenizer, template, record.messages)
    trained = trained_text(tokenizer, input_ids, labels)
    assert trained.startswith("Hi there.<|im_end|>")
    assert "Say hi" not in trained
    if fmt in ("messages", "sharegpt"):
        assert trained.count("<|im_end|>") == 2 and "Bye for now." in trained


def test_field_mapping_and_explicit_format(tokenizer):
    rows = [({"question": "Say hi.", "answer": "Hi there."}, Source("qa.csv", 2))]
    (record,) = list(
        normalize(rows, "conversation", fmt="alpaca", fields={"instruction": "question", "output": "answer"})
    )
    assert record.messages == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi there."},
    ]


def test_plain_template_for_tokenizers_without_chat_tokens(tokenizer):
    template = ChatTemplate(PLAIN_TEMPLATE, "built-in plain")
    input_ids, labels = encode_conversation(tokenizer, template, MULTI_TURN)
    trained = trained_text(tokenizer, input_ids, labels)
    assert "Hi there.<|endoftext|>" in trained and "Bye for now.<|endoftext|>" in trained
    assert "### User" not in trained and "Say hi" not in trained


def test_tokenizer_without_template_gets_a_builtin_and_says_which(shared_dir):
    stories = AutoTokenizer.from_pretrained(shared_dir / "models" / "stories260k")
    template = resolve_chat_template(stories)
    assert template.origin.startswith("built-in plain")
    input_ids, labels = encode_conversation(stories, template, MULTI_TURN[1:3])
    trained = [label for label in labels if label != IGNORE_INDEX]
    assert trained[-1] == stories.eos_token_id  # EOS ends the turn, so generation stops there
    assert labels[-1] == IGNORE_INDEX  # the blank line after the turn is layout, not trained
