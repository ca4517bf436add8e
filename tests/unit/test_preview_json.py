"""`tunesmith data preview CONFIG --json`: the trained spans of each sample, as text a program can check."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tunesmith.cli import app

from ..conftest import SHARED


def test_preview_json_on_tool_calling_data(tmp_path):
    rows = [json.loads(line) for line in (SHARED / "datasets/glaive_toolcall_en_demo/train.jsonl").open()][:6]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "config.yaml"
    template = SHARED / "chat_templates" / "qwen2_5.jinja"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "instruct",
                "data": {
                    "train": str(data),
                    "eval_fraction": 0.0,
                    "chat_template": str(template),
                    "max_seq_len": 4096,
                },
            }
        )
    )
    result = CliRunner().invoke(app, ["data", "preview", str(config), "--json", "-n", "3"])
    assert result.exit_code == 0, result.output
    samples = json.loads(result.stdout)  # library warnings go to stderr
    assert len(samples) == 3
    for sample in samples:
        assert sample["source"].startswith(f"{data}:")
        line = int(sample["source"].rsplit(":", 1)[1])
        turns = rows[line - 1]["conversations"]
        assistant = [t["value"] for t in turns if t["from"] == "gpt"]
        calls = [json.loads(t["value"])["name"] for t in turns if t["from"] == "function_call"]
        assert len(sample["trained"]) == len(assistant) + len(calls)
        for span in sample["trained"]:
            assert span.endswith("<|im_end|>") and span in sample["text"]
            assert "<tool_response>" not in span and "<|im_start|>" not in span
        text_spans = [s for s in sample["trained"] if not s.startswith("<tool_call>")]
        assert [s.removesuffix("<|im_end|>") for s in text_spans] == assistant
        assert all(name in sample["text"] for name in calls)
