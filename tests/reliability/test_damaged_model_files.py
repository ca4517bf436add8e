"""Damaged files around a trained model, really damaged on disk: a truncated
`final/adapter_config.json` (serve, generate, export, export --format gguf), a damaged
`final/tunesmith.json`, a GGUF base whose magic is right and whose body is broken, a --llama-cpp
folder without its `conversion/` package. Each is one line naming the file, exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.errors import UserError
from tunesmith.train.rundir import read_model_info

from .helpers import instruct_file, make_config


@pytest.fixture(scope="module")
def trained_run(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged-model-files")
    config = make_config(tiny_models["llama"], instruct_file(root), root / "runs", train__max_steps=1)
    return api.train(config).run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _tunesmith(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]


@pytest.mark.parametrize(
    "verb",
    [
        ("generate", "--prompt", "hi"),
        ("export", "--out", "merged"),
        ("export", "--format", "gguf", "--out", "gguf"),
        ("serve", "--port", "0", "--device", "cpu"),
    ],
    ids=lambda verb: " ".join(verb[:3]),
)
def test_a_truncated_adapter_config_is_one_line_naming_it(run_copy, tmp_path, verb):
    config_file = run_copy / "final" / "adapter_config.json"
    text = config_file.read_text()
    config_file.write_text(text[: len(text) // 2])
    result = _tunesmith(verb[0], str(run_copy), *verb[1:], cwd=tmp_path)
    _assert_one_line(result, str(config_file), "damaged")


def test_a_damaged_model_info_file_is_an_error_naming_it(run_copy, tmp_path):
    info_file = run_copy / "final" / "tunesmith.json"
    assert read_model_info(run_copy / "final")["task"] == "instruct"
    text = info_file.read_text()
    info_file.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="tunesmith.json is damaged"):
        read_model_info(run_copy / "final")
    info_file.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        read_model_info(run_copy / "final")
    info_file.write_text(text[:10])
    _assert_one_line(_tunesmith("export", str(run_copy), "--out", "merged", cwd=tmp_path), str(info_file))


def _small_gguf(path: Path) -> Path:
    """A real GGUF file (the `gguf` package's writer): metadata and one float tensor."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("damage", ["tensor data cut off", "metadata cut off"])
def test_a_gguf_base_with_a_broken_body_is_one_line_naming_it(tiny_llama, tmp_path, damage):
    import yaml

    from tunesmith.models.load import gguf_damage

    from ..conftest import tiny_config

    model = _small_gguf(tmp_path / "base.gguf")
    assert gguf_damage(str(model)) is None
    data = model.read_bytes()
    assert data[:4] == b"GGUF"
    model.write_bytes(data[: len(data) - 1000] if damage == "tensor data cut off" else data[:60])
    assert gguf_damage(str(model)) is not None
    config_file = tmp_path / "config.yaml"
    config = tiny_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs")
    config["model"]["name"] = str(model)
    config_file.write_text(yaml.safe_dump(config))
    _assert_one_line(_tunesmith("train", str(config_file), cwd=tmp_path), str(model))
    assert not (tmp_path / "runs").exists()


def test_a_llama_cpp_folder_without_its_conversion_package_is_one_line(run_copy, tmp_path):
    # A llama.cpp checkout whose convert_hf_to_gguf.py imports conversion/ that is not there.
    llama_cpp = tmp_path / "llama.cpp"
    (llama_cpp / "gguf-py" / "gguf").mkdir(parents=True)
    (llama_cpp / "convert_hf_to_gguf.py").write_text("import gguf\nfrom conversion import ModelBase\n")
    result = _tunesmith(
        "export",
        str(run_copy),
        "--format",
        "gguf",
        "--out",
        "gguf",
        "--llama-cpp",
        str(llama_cpp),
        cwd=tmp_path,
    )
    _assert_one_line(result, "conversion/", str(llama_cpp))
    assert not (tmp_path / "gguf").exists()
