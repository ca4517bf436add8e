"""Memory estimates: parameter counts from configs, method ordering, and the estimate against
the measured peak RSS of real CPU training steps (each in a fresh process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.models.catalog import filter_catalog, find
from tunesmith.models.memory import (
    GIB,
    Setting,
    estimate_memory,
    parse_size,
    shape_from_config,
)
from tunesmith.train.memory_probe import measure_training_peak


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_parameter_count_matches_the_model(tiny_models: dict[str, Path], arch: str) -> None:
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_models[arch] / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch])
    actual = sum(p.numel() for p in model.parameters())
    assert shape_from_config(config).num_parameters == pytest.approx(actual, rel=0.01)


def test_catalogue_shapes_give_the_published_sizes() -> None:
    for name in (
        "Qwen/Qwen2.5-0.5B",
        "meta-llama/Llama-3.2-1B",
        "HuggingFaceTB/SmolLM2-135M",
        "mistralai/Mistral-7B-v0.3",
    ):
        entry = find(name)
        assert entry is not None and entry.shape is not None
        assert entry.shape.num_parameters == pytest.approx(entry.params, rel=0.05), name
    small = filter_catalog(("causal_lm", "chat"), max_params=1e9, license="apache-2.0", min_context=8192)
    assert small and all(e.params <= 1e9 and e.context >= 8192 for e in small)


def test_method_ordering_on_a_7b_model() -> None:
    shape = find("Qwen/Qwen2.5-7B").shape
    estimate = {
        m: estimate_memory(shape, Setting(m, 2048, 4, device="cuda")).total for m in ("full", "lora", "qlora")
    }
    assert estimate["qlora"] < estimate["lora"] < estimate["full"]
    assert estimate["full"] > 80 * GIB  # bf16 weights + grads + AdamW states alone are ~61 GB
    with_gc = estimate_memory(shape, Setting("lora", 2048, 4, True, device="cuda")).total
    assert with_gc < estimate["lora"]
    # 15 GB of bf16 weights + layer inputs + two layers' activations + the logits chunk.
    assert 16 * GIB < with_gc < 40 * GIB


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 * GIB == parse_size("24GB") == parse_size("24g")
    assert parse_size("512MiB") == 512 * 1024**2
    with pytest.raises(ValueError):
        parse_size("lots")


MEASURED = [
    # (config, setting): Llama shapes of a few sizes, fp32 on CPU, packed rows
    (
        {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_key_value_heads": 4},
        Setting("full", 256, 4, device="cpu"),
    ),
    (
        {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_key_value_heads": 2},
        Setting("lora", 256, 8, device="cpu"),
    ),
]


@pytest.mark.parametrize(("shape", "setting"), MEASURED, ids=["full-h256", "lora-h384"])
def test_estimate_within_15_percent_of_measured_peak_rss(shape: dict, setting: Setting) -> None:
    config = {
        "model_type": "llama",
        "vocab_size": 2928,
        "num_attention_heads": 8,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        **shape,
    }
    measured = measure_training_peak(config, setting, steps=2)
    setting.baseline_bytes = measured["baseline_rss_bytes"]
    estimate = estimate_memory(shape_from_config(config), setting).total
    assert estimate == pytest.approx(measured["peak_rss_bytes"], rel=0.15), (estimate, measured)
    # The part above the process baseline must be predicted too, not just the baseline.
    model_part = measured["peak_rss_bytes"] - measured["baseline_rss_bytes"]
    assert abs(estimate - measured["peak_rss_bytes"]) < 0.35 * model_part


def test_the_memory_estimate_counts_an_on_policy_groups_answers() -> None:
    """task reward: a micro-batch holds each prompt once and its group's answers (on the prompt's cache)."""
    from tunesmith.config import build_config

    def rows(task: str, **reward: int) -> int:
        functions = [{"function": "length"}]
        values = {"task": task, "data": {"max_seq_len": 256}, "train": {"batch_size": 4}}
        return build_config(values | {"reward": {"functions": functions} | reward}).batch_rows()

    assert rows("instruct") == 4  # supervised: batch_size rows of max_seq_len
    # 4 x (248 prompt tokens + 8 answers x 8 tokens) = 1248 tokens: 5 rows of 256.
    assert rows("reward", group_size=8, max_completion_tokens=8) == 5
    assert rows("reward", group_size=8, max_completion_tokens=128) == 4 * (128 + 8 * 128) // 256
    assert rows("reward", group_size=16, max_completion_tokens=128) > rows(
        "reward", group_size=8, max_completion_tokens=128
    )
