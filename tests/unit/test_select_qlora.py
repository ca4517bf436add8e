"""select recommends QLoRA when only it fits (select.choose_method / build_recommendation)."""

from __future__ import annotations

import sys

import pytest

from tunesmith.models.memory import ModelShape, Setting, estimate_memory
from tunesmith.select import Candidate, build_recommendation, choose_method


def _shape() -> ModelShape:
    # A 7B-class decoder: 32 layers of 4096, vocab 32k.
    return ModelShape(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
    )


def _qlora_candidate() -> Candidate:
    hyper = {"epochs": 1.0, "learning_rate": 2e-4, "lora_rank": 16, "max_seq_len": 512}
    info = {"hyperparameters": hyper, "reasoning": ["r 16"], "batch_size": 4}
    return Candidate(name="big", path="/models/big", method="qlora", info=info)


def test_only_qlora_fits_so_qlora_is_chosen() -> None:
    shape = _shape()
    lora = estimate_memory(shape, Setting("lora", 512, 1, True, 16, "cuda")).total
    qlora = estimate_memory(shape, Setting("qlora", 512, 1, True, 16, "cuda")).total
    assert qlora < lora
    budget = (qlora + lora) // 2  # between the two: only QLoRA fits
    method, _, _ = choose_method(shape, 7e9, 1000, 512, 1, "cuda", budget)
    assert method == "qlora"


def test_the_recommended_config_trains_qlora() -> None:
    pytest.importorskip("bitsandbytes")  # a qlora config validates only with it installed
    config, why = build_recommendation(_qlora_candidate(), "instruct", "train.jsonl", "cuda")
    assert config.adapter.method == "qlora"
    assert why[0].startswith("method qlora") and "4-bit" in why[0]


def test_without_bitsandbytes_the_recommendation_says_how_to_get_qlora(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    config, why = build_recommendation(_qlora_candidate(), "instruct", "train.jsonl", "cuda")
    assert config.adapter.method == "lora"
    assert 'pip install "tunesmith[gpu]"' in why[0] and "qlora" in why[0]
