"""Hostile or careless inputs: a sequence length over the model's positions or absurdly large, a
run that cannot fit in memory, non-finite numbers, duplicate YAML keys, keys that do not apply,
a GitHub token in the data, malformed data files, a symlinked eval/, a pickle in place of a
classifier adapter, and a real 50 MB record (peak RSS measured, bounded at ~1 GB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.config import build_config, config_warnings, load_config
from tunesmith.errors import UserError
from tunesmith.models import limits

from ..conftest import tiny_config, write_jsonl
from .helpers import all_text, instruct_file, make_config

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def test_max_seq_len_over_the_models_positions_is_refused_with_the_limit_and_the_override(
    tiny_llama, tmp_path
):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", data__max_seq_len=4096)
    with pytest.raises(UserError) as caught:
        api.train(config)
    message = str(caught.value)
    assert "4096" in message and "512 positions" in message and "model.allow_longer_context: true" in message
    assert not (tmp_path / "runs").exists()
    allowed = make_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        data__max_seq_len=4096,
        model={"name": str(tiny_llama), "device": "cpu", "allow_longer_context": True},
    )
    limits.check_context_length(limits.model_config_dict(str(tiny_llama), allowed), allowed)  # no error
    assert limits.context_limit({"n_positions": 1024}) == 1024  # GPT-2 naming
    assert limits.context_limit({"text_config": {"max_position_embeddings": 8192}}) == 8192


def test_an_absurd_max_seq_len_is_a_config_error(tiny_llama, tmp_path):
    with pytest.raises(UserError, match=r"data\.max_seq_len"):
        make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", data__max_seq_len=10**7)


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(tiny_llama, tmp_path):
    config = make_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__batch_size=10**7)
    with pytest.raises(UserError) as caught:
        api.train(config)
    message = str(caught.value)
    assert "free" in message and "train.check_memory: false" in message and "train.batch_size" in message
    assert not (tmp_path / "runs").exists()
    skipped = make_config(
        tiny_llama,
        instruct_file(tmp_path),
        tmp_path / "runs",
        train__batch_size=10**7,
        train__check_memory=False,
    )
    limits.check_memory(limits.model_config_dict(str(tiny_llama), skipped), skipped, "cpu")  # no error


@pytest.mark.parametrize(
    "override",
    ["train.learning_rate=inf", "train.learning_rate=nan", "train.epochs=inf", "train.max_grad_norm=nan"],
)
def test_non_finite_numbers_in_the_config_are_refused(tmp_path, override):
    with pytest.raises(UserError, match=override.split("=")[0]):
        load_config(None, [override])


def test_a_duplicate_yaml_key_is_an_error_naming_both_lines(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "task: instruct\ntrain:\n  learning_rate: 1e-4\n  batch_size: 2\n  learning_rate: 1e-3\n"
    )
    with pytest.raises(UserError) as caught:
        load_config(str(config_file), [])
    message = str(caught.value)
    assert str(config_file) in message and "learning_rate" in message and "lines 3 and 5" in message


def test_keys_that_do_not_apply_to_the_task_or_method_are_warned(tiny_llama, tmp_path):
    config = build_config(
        {"task": "instruct", "data": {"labels": ["a", "b"]}, "adapter": {"method": "full", "r": 8}}
    )
    warnings = config_warnings(config)
    assert any("data.labels" in w and "classify" in w for w in warnings)
    assert any("adapter.r" in w and "lora" in w for w in warnings)
    assert config_warnings(build_config({"task": "classify", "data": {"labels": ["a", "b"]}})) == []
    assert config_warnings(build_config({"task": "instruct", "adapter": {"r": 8}})) == []


def test_a_github_token_in_the_data_never_reaches_the_run_files_unmasked(tiny_llama, tmp_path):
    rows = [
        {
            "instruction": f"Say the key {GITHUB_TOKEN} number {i}.",
            "input": "",
            "output": f"{GITHUB_TOKEN} {i}",
        }
        for i in range(20)
    ]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    config = make_config(
        tiny_llama,
        train_file,
        tmp_path / "runs",
        train__max_steps=1,
        eval={"before": True, "after": True, "forgetting": False, "num_prompts": 2, "max_new_tokens": 4},
    )
    api.train(config)
    text = all_text(tmp_path / "runs" / "run")
    assert GITHUB_TOKEN not in text
    assert "***" in (tmp_path / "runs" / "run" / "eval" / "after.json").read_text()


def _data_check(tiny_llama, path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunesmith", "data", "check", str(path), "--model", str(tiny_llama)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_data_check_exits_2_for_malformed_jsonl_and_json_alike(tiny_llama, tmp_path):
    good = json.dumps({"instruction": "Say hi.", "output": "hi"})
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(f"{good}\n{{broken\n{good}\n")
    whole = tmp_path / "bad.json"
    whole.write_text('[{"instruction": "Say hi.", "output": "hi"},')
    for path in (jsonl, whole):
        result = _data_check(tiny_llama, path)
        assert result.returncode == 2, (path, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr


def test_eval_refuses_to_write_through_a_symlinked_eval_folder(tiny_llama, tmp_path):
    train_file = instruct_file(tmp_path)
    api.train(make_config(tiny_llama, train_file, tmp_path / "runs", train__max_steps=1))
    run_dir = tmp_path / "runs" / "run"
    outside = tmp_path / "outside"
    outside.mkdir()
    if (run_dir / "eval").exists():
        for child in (run_dir / "eval").iterdir():
            child.unlink()
        (run_dir / "eval").rmdir()
    (run_dir / "eval").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="symlink"):
        api.evaluate(str(run_dir), str(train_file), overrides=["eval.forgetting=false", "eval.num_prompts=0"])
    assert list(outside.iterdir()) == []


def test_predict_refuses_a_pickle_adapter_without_pytorchs_advice(tiny_llama, tmp_path):
    import torch

    rows = [
        {"text": f"{w} text {i}", "label": "pos" if i % 2 else "neg"} for i, w in enumerate(["a", "b"] * 10)
    ]
    train_file = write_jsonl(tmp_path / "labeled.jsonl", rows)
    config = build_config(
        {
            **tiny_config(tiny_llama, train_file, tmp_path / "runs"),
            "task": "classify",
            "train": {"max_steps": 1},
        }
    )
    api.train(config)
    final = tmp_path / "runs" / "run" / "final"
    (final / "adapter_model.safetensors").unlink()
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Payload()}, final / "adapter_model.bin")
    with pytest.raises(UserError) as caught:
        api.predict(str(tmp_path / "runs" / "run"), str(train_file), tmp_path / "out.csv", device="cpu")
    assert not marker.exists()
    assert "weights_only" not in str(caught.value) and "refusing to load a pickle" in str(caught.value)


def _peak_rss_of(command: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run `command`; its peak resident memory in bytes (RUSAGE_CHILDREN of a fresh helper)."""
    probe = (
        "import resource, subprocess, sys, json;"
        # A guard for the machine: a regression fails with MemoryError instead of eating all RAM.
        "resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30));"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps([r.returncode, r.stdout[-3000:], r.stderr[-3000:],"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=600)
    code, stdout, stderr, max_rss = json.loads(out.stdout)

    return subprocess.CompletedProcess(command, code, stdout, stderr), max_rss * 1024


@pytest.mark.slow
def test_a_50_mb_record_is_handled_in_bounded_memory_and_named(tiny_llama, tmp_path):
    words = ("the quick brown fox jumps over a lazy dog while seven small birds sing " * 8).split()
    text = " ".join(words[i % len(words)] for i in range(11_000_000))[: 50 * 2**20]
    good = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(10)]
    rows = [*good[:5], {"instruction": "Summarise.", "output": text}, *good[5:]]
    train_file = write_jsonl(tmp_path / "huge.jsonl", rows)
    assert train_file.stat().st_size > 50 * 10**6
    del text, rows

    check, check_rss = _peak_rss_of(
        [sys.executable, "-m", "tunesmith", "data", "check", str(train_file), "--model", str(tiny_llama)]
    )
    assert check.returncode in (0, 1), check.stderr
    assert f"{train_file}:6" in check.stdout and "Traceback" not in check.stderr
    assert check_rss < 2**30, f"data check peaked at {check_rss / 2**20:.0f} MiB"

    config_file = tmp_path / "config.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(tiny_config(tiny_llama, train_file, tmp_path / "runs")))
    train, train_rss = _peak_rss_of([sys.executable, "-m", "tunesmith", "train", str(config_file)])
    assert train.returncode == 2, train.stderr
    assert (
        f"{train_file}:6" in train.stderr and "characters" in train.stderr and "Traceback" not in train.stderr
    )
    assert train_rss < 2**30, f"train peaked at {train_rss / 2**20:.0f} MiB"
    print(f"peak RSS: data check {check_rss / 2**20:.0f} MiB, train {train_rss / 2**20:.0f} MiB")
