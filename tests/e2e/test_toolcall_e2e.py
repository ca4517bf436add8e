"""Tool-calling data end to end on a tiny model: it trains, and before/after carry the tool-call figures."""

from __future__ import annotations

import json

from tunesmith import api
from tunesmith.config import build_config

from ..conftest import SHARED, tiny_config, write_jsonl


def test_tool_call_figures_before_and_after(tiny_llama, tmp_path):
    rows = [json.loads(line) for line in (SHARED / "datasets/glaive_toolcall_en_demo/train.jsonl").open()]
    rows = [r for r in rows if any(t["from"] == "function_call" for t in r["conversations"])][:12]
    train_file = write_jsonl(tmp_path / "tools.jsonl", rows)
    config = tiny_config(
        tiny_llama,
        train_file,
        tmp_path / "runs",
        data__max_seq_len=512,
        data__eval_fraction=0.25,
        data__chat_template=str(SHARED / "chat_templates" / "qwen2_5.jinja"),
        eval={"before": True, "after": True, "forgetting": False, "num_prompts": 1, "max_new_tokens": 4},
    )
    config["eval"].update(max_tool_call_turns=2, tool_call_max_new_tokens=8)
    result = api.train(build_config(config))
    for metrics in (result.before, result.after):
        assert metrics["tool_call_turns"] == 2
        for key in ("tool_call_well_formed", "tool_call_name", "tool_call_arguments"):
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["tool_call_arguments"] <= metrics["tool_call_name"] <= metrics["tool_call_well_formed"]
