"""`tunesmith select` end to end on real tiny models: the model pretrained on text like the user's
ranks first, a broken candidate is reported and skipped, and an impossible memory budget is said plainly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import ASSETS
from tunesmith.cli import app
from tunesmith.config import build_config


@pytest.fixture(scope="module")
def general_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text like the embedded model's training data: its general held-out text, one document per paragraph."""
    text = (ASSETS / "general_heldout.txt").read_text(encoding="utf-8")
    documents = [d for d in text.split("\n\n") if d.strip()][:200]
    path = tmp_path_factory.mktemp("select-data") / "general.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path


def random_init_of_embedded(directory: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = ASSETS / "base-model"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, directory / name)
    return directory


def test_fitting_model_ranks_first_and_broken_one_is_skipped(
    shared_dir: Path, general_text: Path, tmp_path: Path
) -> None:
    if not (ASSETS / "base-model" / "model.safetensors").is_file():
        pytest.skip("the embedded base model's weights are not built")
    random_dir = random_init_of_embedded(tmp_path / "random-init")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    stories = shared_dir / "models" / "stories260k"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "select",
            "--task",
            "pretrain",
            "--data",
            str(general_text),
            "--cpu",
            "--max-seq-len",
            "128",
            "--sample",
            "8",
            "--probe-seconds",
            "1",
            "--out",
            str(out),
            "--candidates",
            str(random_dir),
            str(broken),
            str(stories),
            "embedded",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "select.json").read_text())
    ranked = report["ranked"]
    assert [c["name"] for c in ranked][0] == "embedded"
    assert {c["name"] for c in ranked} == {"embedded", str(stories), str(random_dir)}
    first = ranked[0]
    assert "lowest loss per character" in first["reasons"][0]
    others = [c["fit"]["loss_per_char"] for c in ranked[1:]]
    assert first["fit"]["loss_per_char"] < min(others)
    random_fit = next(c for c in ranked if c["name"] == str(random_dir))["fit"]
    assert random_fit["loss"] > 7.0  # ~ln(vocab): what a model that learned nothing scores
    assert report["skipped"] == [{"name": str(broken), "reason": report["skipped"][0]["reason"]}]
    assert "could not be loaded" in report["skipped"][0]["reason"]
    assert "skipped" in result.output and "embedded" in result.output
    # The written config is a valid tunesmith config for the winner.
    config = build_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert config.model.name == "embedded" and config.task == "pretrain"
    assert config.data.max_seq_len <= 128
    assert report["recommendation"]["hyperparameter_reasoning"]


def test_no_candidate_fits_the_memory(shared_dir: Path, general_text: Path) -> None:
    stories = shared_dir / "models" / "stories260k"
    result = CliRunner().invoke(
        app,
        [
            "select",
            "--task",
            "pretrain",
            "--data",
            str(general_text),
            "--gpu-memory",
            "1MiB",
            "--max-seq-len",
            "64",
            "--sample",
            "4",
            "--probe-seconds",
            "1",
            "--json",
            "--candidates",
            str(stories),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["recommendation"] is None
    assert report["no_fit"].startswith("no candidate fits 1.0 MiB: the smallest that would is")
    assert "stories260k" in report["no_fit"] and "needs" in report["no_fit"]


def test_bad_flags_are_user_errors(general_text: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "select",
            "--task",
            "pretrain",
            "--data",
            str(general_text),
            "--gpu-memory",
            "lots",
            "--candidates",
            "embedded",
        ],
    )
    assert result.exit_code == 2
    assert "--gpu-memory" in result.output


def test_preference_without_candidates_ranks_the_catalogue_models(tmp_path: Path) -> None:
    """The catalogue offers what each task needs (issue 27): preference needs a chat-capable causal
    LM, and no filter was given, so the catalogue's models are tried (hub ids are skipped here)."""
    if not (ASSETS / "base-model" / "model.safetensors").is_file():
        pytest.skip("the embedded base model's weights are not built")
    colours = ["red", "blue", "green", "yellow"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Name colour {i}.", "chosen": colours[i % 4], "rejected": "No."}) + "\n"
            for i in range(16)
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app,
        ["select", "--task", "preference", "--data", str(pairs), "--cpu", "--max-seq-len", "64"]
        + ["--sample", "4", "--probe-seconds", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert [c["name"] for c in report["ranked"]] == ["embedded"]
    skipped = {c["name"] for c in report["skipped"]}
    assert "Qwen/Qwen2.5-0.5B-Instruct" in skipped and "google-bert/bert-base-uncased" not in skipped
    assert report["recommendation"]["model"] == "embedded"


def test_a_config_says_how_the_data_reads_and_the_recommendation_keeps_it(tmp_path: Path) -> None:
    """Columns of the user's own (question/answer) need data.fields: without a config select cannot
    read them; with `--config` every candidate is measured on them and the recommended config keeps
    the mapping and the system prompt, while the model and training settings are select's."""
    if not (ASSETS / "base-model" / "model.safetensors").is_file():
        pytest.skip("the embedded base model's weights are not built")
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(24))
    )
    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "instruct",
                "model": {"name": "some/other-model"},
                "train": {"learning_rate": 0.3},
                "data": {
                    "train": str(data),
                    "fields": {"instruction": "question", "output": "answer"},
                    "system_prompt": "You add one.",
                },
            }
        )
    )
    common = ["--candidates", "embedded", "--cpu", "--sample", "4", "--probe-seconds", "1"]
    without = CliRunner().invoke(app, ["select", "--task", "instruct", "--data", str(data), *common])
    assert without.exit_code == 2 and "cannot tell the conversation data format" in without.output
    out = tmp_path / "selected"
    result = CliRunner().invoke(app, ["select", "--config", str(config), *common, "--out", str(out)])
    assert result.exit_code == 0, result.output
    recommended = yaml.safe_load((out / "config.yaml").read_text())
    assert recommended["data"]["fields"] == {"instruction": "question", "output": "answer"}
    assert recommended["data"]["system_prompt"] == "You add one." and recommended["data"]["train"] == str(
        data
    )
    assert recommended["model"]["name"] != "some/other-model" and recommended["train"]["learning_rate"] != 0.3
    build_config(recommended)  # it validates as written
    assert CliRunner().invoke(app, ["select", *common]).exit_code == 2
