"""Untrusted files: safetensors for weights and adapters, weights_only=True for resume state,
malicious pickles refused without running, remote code off unless the config turns it on."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunesmith import api
from tunesmith.config import Config
from tunesmith.errors import UserError
from tunesmith.train.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    TRAINABLE_FILE,
    TrainerState,
    load_checkpoint,
    save_checkpoint,
)

from ..reliability.helpers import instruct_file, make_config
from ..reliability.test_checkpoint_faults import _toy


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _write_malicious_pickle(path: Path, marker: Path) -> None:
    torch.save({"state": _Payload(marker)}, path)


@pytest.mark.parametrize("replaced", [OPTIMIZER_FILE, RNG_FILE, TRAINABLE_FILE])
def test_malicious_pickle_in_a_checkpoint_runs_nothing_and_is_refused(tmp_path, replaced):
    model, optimizer, scheduler = _toy()
    checkpoint = save_checkpoint(tmp_path / "checkpoints", model, optimizer, scheduler, TrainerState(1, 5), 2)
    marker = tmp_path / "PWNED"
    _write_malicious_pickle(checkpoint / replaced, marker)
    with pytest.raises(UserError) as error:
        load_checkpoint(checkpoint, *_toy())
    assert not marker.exists()
    message = str(error.value)
    assert str(checkpoint) in message
    assert "Traceback" not in message and "weights_only=False" not in message


def test_resume_state_is_loaded_with_weights_only(tmp_path, monkeypatch):
    from tunesmith.train import checkpoint as checkpoint_module

    model, optimizer, scheduler = _toy()
    checkpoint = save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(1, 5), 2)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", spy)
    load_checkpoint(checkpoint, *_toy())
    assert calls and all(flag is True for flag in calls)
    # Weights are safetensors, never pickles.
    assert (checkpoint / TRAINABLE_FILE).read_bytes()[8:9] == b"{"


def test_trained_weights_and_adapters_are_safetensors(tiny_llama, tmp_path):
    for method in ("lora", "full"):
        config = make_config(
            tiny_llama,
            instruct_file(tmp_path),
            tmp_path / "runs",
            run_name=method,
            adapter__method=method,
            train__max_steps=1,
        )
        result = api.train(config)
        files = [p.name for p in result.final_dir.iterdir()]
        assert any(name.endswith(".safetensors") for name in files), files
        assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files), files


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=2, target_modules="all-linear")
    )
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, directory / name)
    return directory


@pytest.mark.parametrize("file_name", ["adapter_model.bin", "adapter_model.safetensors"])
def test_malicious_pickle_as_adapter_runs_nothing_and_is_refused(adapter_dir, tmp_path, file_name):
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    _write_malicious_pickle(adapter / file_name, marker)
    with pytest.raises(UserError) as error:
        api.load_for_inference(str(adapter), device="cpu")
    assert not marker.exists()
    assert str(adapter) in str(error.value)
    assert "weights_only" not in str(error.value)  # no advice to turn the protection off


def test_malicious_pickle_as_model_weights_runs_nothing_and_is_refused(tiny_llama, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    _write_malicious_pickle(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(UserError, match="refusing to load a pickle"):
        api.load_for_inference(str(model_dir), device="cpu")
    assert not marker.exists()


def test_trust_remote_code_is_off_by_default():
    from tunesmith.models.load import model_load_kwargs

    assert Config().model.trust_remote_code is False
    assert model_load_kwargs(Config().model, "cpu")["trust_remote_code"] is False


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_model_asking_for_remote_code_is_refused_with_the_flag_to_set(
    tiny_llama, tmp_path, monkeypatch, config_name
):
    from tunesmith.tasks import instruct

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    config_file = model_dir / config_name
    values = json.loads(config_file.read_text())
    values["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoTokenizer": "tok_evil.Tok"}
    config_file.write_text(json.dumps(values))
    marker = tmp_path / "PWNED"
    code = f"open({str(marker)!r}, 'w').write('pwned')\n"
    (model_dir / "modeling_evil.py").write_text(code)
    (model_dir / "tok_evil.py").write_text(code)

    def never(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(instruct, "load_causal_lm", never)
    config = make_config(model_dir, instruct_file(tmp_path), tmp_path / "runs")
    with pytest.raises(UserError, match=r"model\.trust_remote_code: true") as error:
        api.train(config)
    assert config_name in str(error.value)
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()
