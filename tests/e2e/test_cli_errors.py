"""Bad input through the real CLI: one clear line, exit code 2, no traceback, no run directory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ..conftest import write_jsonl


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def workspace(tmp_path, tiny_llama, instruct_rows):
    train = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    config = {
        "task": "instruct",
        "model": {"name": str(tiny_llama)},
        "data": {"train": str(train)},
        "train": {"max_steps": 1},
        "output_dir": str(tmp_path / "runs"),
        "run_name": "r",
    }
    return tmp_path, config


def check_clean_failure(result, tmp_path, *expected):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in expected:
        assert fragment in result.stderr.replace("\n", " "), result.stderr
    assert not (tmp_path / "runs" / "r").exists(), "a half-written run directory was left behind"


def write_config(tmp_path, config):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_missing_data_file(workspace):
    tmp_path, config = workspace
    config["data"]["train"] = str(tmp_path / "nope.jsonl")
    check_clean_failure(run_cli("train", write_config(tmp_path, config)), tmp_path, "nope.jsonl", "not found")


def test_malformed_json_line_names_file_and_line(workspace):
    tmp_path, config = workspace
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    config["data"]["train"] = str(bad)
    check_clean_failure(
        run_cli("train", write_config(tmp_path, config)), tmp_path, f"{bad}:2", "malformed JSON"
    )


def test_missing_field_names_file_line_and_field(workspace):
    tmp_path, config = workspace
    bad = write_jsonl(tmp_path / "missing.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    config["data"]["train"] = str(bad)
    check_clean_failure(run_cli("train", write_config(tmp_path, config)), tmp_path, f"{bad}:2", "`output`")


def test_empty_dataset(workspace):
    tmp_path, config = workspace
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    config["data"]["train"] = str(empty)
    check_clean_failure(run_cli("train", write_config(tmp_path, config)), tmp_path, "empty")


def test_unknown_model_path(workspace):
    tmp_path, config = workspace
    config["model"]["name"] = str(tmp_path / "no-such-model")
    check_clean_failure(
        run_cli("train", write_config(tmp_path, config)), tmp_path, "no-such-model", "not found"
    )


def test_unknown_config_key_suggests_the_right_one(workspace):
    tmp_path, config = workspace
    config["train"]["learnig_rate"] = 0.1
    check_clean_failure(
        run_cli("train", write_config(tmp_path, config)),
        tmp_path,
        "train.learnig_rate",
        "train.learning_rate",
    )


def test_unknown_override_key(workspace):
    tmp_path, config = workspace
    result = run_cli("train", write_config(tmp_path, config), "data.max_seq_length=64")
    check_clean_failure(result, tmp_path, "data.max_seq_length", "data.max_seq_len")


def test_help_does_not_import_torch():
    code = "import sys, tunesmith.cli; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_command_that_loads_peft_prints_no_bitsandbytes_line(workspace):
    # peft imports bitsandbytes, whose CPU backend logged "Failed to load CPU gemm_4bit_forward
    # from kernels-community ..." on every command that trained or loaded an adapter.
    tmp_path, config = workspace
    config["eval"] = {"before": False, "after": False, "forgetting": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    generated = run_cli("generate", str(tmp_path / "runs" / "r"), "--prompt", "hi", "--max-new-tokens", "2")
    assert generated.returncode == 0, generated.stderr
    for output in (result, generated):
        assert "gemm_4bit" not in output.stderr and "bitsandbytes" not in output.stderr, output.stderr
