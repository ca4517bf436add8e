"""The chat templates shipped in examples/templates train exactly the assistant's words and calls."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from tunesmith.config import load_config
from tunesmith.data.formats import normalize
from tunesmith.data.load import Source
from tunesmith.data.preview import trained_spans
from tunesmith.data.templates import encode_conversations, resolve_chat_template

from ..conftest import ASSETS, REPO, SHARED


def test_chatml_tools_template_on_glaive():
    config = load_config(REPO / "examples" / "instruct_toolcall_smollm2.yaml")
    template_path = REPO / config.data.chat_template
    assert template_path.is_file()
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "base-model")  # ChatML tokens, as SmolLM2's
    template = resolve_chat_template(tokenizer, str(template_path))
    path = SHARED / "datasets" / "glaive_toolcall_en_demo" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:30]]
    records = list(normalize([(row, Source(str(path), i + 1)) for i, row in enumerate(rows)], "conversation"))
    for row, record in zip(rows, records, strict=True):
        samples = encode_conversations(tokenizer, template, record.messages, record.tools)
        assert len(samples) == 1  # this template renders prefix by prefix: one sample per conversation
        spans = trained_spans(tokenizer, *samples[0])
        expected = []
        for turn in row["conversations"]:
            if turn["from"] == "gpt":
                expected.append(turn["value"] + "<|im_end|>")
            elif turn["from"] == "function_call":
                call = json.loads(turn["value"])
                expected.append(json.dumps(call["arguments"]))
        assert len(spans) == len(expected)
        for span, want in zip(spans, expected, strict=True):
            if want.endswith("<|im_end|>"):
                assert span == want
            else:  # a call: the JSON of its arguments, inside <tool_call>...</tool_call>
                assert span.startswith('<tool_call>{"name": ') and want in span
                assert span.endswith("}</tool_call><|im_end|>")
