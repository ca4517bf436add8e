"""GGUF base models: which file a model.name means (the loading itself is in tests/e2e/test_real_model.py)."""

from __future__ import annotations

import pytest

from tunesmith.config import ModelConfig
from tunesmith.errors import UserError
from tunesmith.models.load import gguf_source, resolve_model_path


def test_a_gguf_file_is_a_model_name(tmp_path):
    path = tmp_path / "m.Q4.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model_path(str(path)) == str(path)
    assert gguf_source(str(path), ModelConfig(name=str(path))) == (str(tmp_path), "m.Q4.gguf")


def test_a_folder_with_one_gguf_or_a_named_one(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert gguf_source(str(tmp_path), ModelConfig()) == (str(tmp_path), "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="model.gguf_file"):
        gguf_source(str(tmp_path), ModelConfig())
    assert gguf_source(str(tmp_path), ModelConfig(gguf_file="b.gguf")) == (str(tmp_path), "b.gguf")
    with pytest.raises(UserError, match="c.gguf not found"):
        gguf_source(str(tmp_path), ModelConfig(gguf_file="c.gguf"))


def test_an_hf_folder_is_not_gguf(tiny_llama):
    assert gguf_source(str(tiny_llama), ModelConfig()) is None


def test_a_gguf_inside_an_installed_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_model_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "w.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_model_path("fake_model_pkg/w.gguf") == str(package / "w.gguf")
    with pytest.raises(UserError, match="PACKAGE/FILE.gguf"):
        resolve_model_path("fake_model_pkg/other.gguf")


def test_a_models_config_is_read_from_config_json_or_the_gguf_metadata(tiny_llama, tmp_path):
    # select reads the shape of every candidate this way: a GGUF base has no config.json.
    import json

    from tests.real_model import require_smollm2
    from tunesmith.models.load import model_config_dict

    assert model_config_dict(str(tiny_llama), ModelConfig()) == json.loads(
        (tiny_llama / "config.json").read_text()
    )
    assert model_config_dict(str(tmp_path), ModelConfig()) is None  # nothing local to read
    smollm2 = require_smollm2()
    shape = model_config_dict(str(smollm2), ModelConfig())
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]) == (576, 30, 49152)
    assert shape["num_attention_heads"] == 9 and shape["num_key_value_heads"] == 3
    # train's memory estimate reads it the same way (it gave none for a GGUF base before).
    from tunesmith.config import build_config
    from tunesmith.train.prediction import estimate_run_memory

    config = build_config({"task": "instruct", "model": {"name": str(smollm2)}, "data": {"train": "x.jsonl"}})
    assert estimate_run_memory(config, str(smollm2), "cpu") > 135e6 * 4  # at least the fp32 weights
