"""The real SmolLM2-135M-Instruct (GGUF, `make real-model`): it answers, it trains with LoRA on
tool calls, and the adapter records and reloads its GGUF base. Slow: each load dequantises 135M."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import build_config

from ..conftest import SHARED, tiny_config, write_jsonl
from ..real_model import require_smollm2

pytestmark = pytest.mark.slow


def test_generate_from_the_gguf_answers_paris():
    gguf = require_smollm2()
    result = CliRunner().invoke(
        app, ["generate", str(gguf), "-p", "What is the capital of France?", "--max-new-tokens", "16"]
    )
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout


def test_lora_on_tool_calls_records_and_reloads_the_gguf_base(tmp_path):
    gguf = require_smollm2()
    rows = [json.loads(line) for line in (SHARED / "datasets/glaive_toolcall_en_demo/train.jsonl").open()][:8]
    train_file = write_jsonl(tmp_path / "tools.jsonl", rows)
    config = tiny_config(
        gguf,
        train_file,
        tmp_path / "runs",
        data__max_seq_len=256,
        data__eval_fraction=0.0,
        train__max_steps=2,
        train__learning_rate=1e-4,
        # SmolLM2's own template has no tool support: Qwen2.5's ChatML one fits its tokens.
        data__chat_template=str(SHARED / "chat_templates" / "qwen2_5.jinja"),
    )
    result = api.train(build_config(config))
    final = result.run_dir / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(gguf)
    model, tokenizer = api.load_for_inference(str(result.run_dir))
    assert "tool" in tokenizer.chat_template
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_a_dequantised_gguf_base_saves_as_a_plain_model(tmp_path):
    """Its config no longer says "quantised with gguf": a full finetune's final/ reloads trainable and savable."""
    from transformers import AutoModelForCausalLM

    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_causal_lm

    gguf = require_smollm2()
    load_causal_lm(str(gguf), ModelConfig(name=str(gguf)), "cpu").save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "quantization_config" not in config and config["gguf_source"]["file"] == str(gguf)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert getattr(reloaded, "hf_quantizer", None) is None
    reloaded.save_pretrained(tmp_path / "again")  # refused while it was marked quantised
