"""Continued pretraining end to end: the real CLI on a tiny model and a small corpus folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tunesmith.config import build_config, load_config
from tunesmith.models.load import load_tokenizer
from tunesmith.tasks import pretrain

from ..conftest import REPO, tiny_config, write_jsonl

WORDS = [
    "the",
    "harbour",
    "master",
    "logs",
    "each",
    "vessel",
    "by",
    "name",
    "tonnage",
    "berth",
    "and",
    "the",
    "hour",
    "of",
    "its",
    "arrival",
]


def write_corpus(folder: Path, num_documents: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(num_documents):
        lines = [" ".join(WORDS[i] for i in rng.permutation(len(WORDS))[:10]) for _ in range(30)]
        suffix = ".md" if index % 3 == 0 else ".txt"
        (folder / f"log{index:02d}{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A Latin-1 file among the UTF-8 ones: reported, not fatal.
    (folder / "zz_latin1.txt").write_bytes("the harbour caf\u00e9 opens at dawn\n".encode("latin-1"))
    return folder


def pretrain_config(model_dir: Path, corpus: Path, tmp_path: Path, run_name: str, **overrides) -> dict:
    values = tiny_config(
        model_dir,
        corpus,
        tmp_path / "runs",
        task="pretrain",
        run_name=run_name,
        adapter={"method": "full"},
        **overrides,
    )
    values["data"].update({"max_seq_len": 64, "cache_dir": str(tmp_path / "cache"), "eval_fraction": 0.25})
    values["train"].update({"max_steps": 12, "batch_size": 4, "learning_rate": 3e-3})
    values["eval"] = {"before": True, "after": True, "forgetting": True, "max_general_tokens": 1024}
    return values


def run_cli_here(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_pretrain_reports_domain_and_general_perplexity_and_reuses_the_cache(tiny_llama, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config_file = tmp_path / "pretrain.yaml"
    values = pretrain_config(tiny_llama, corpus, tmp_path, "first")
    values["data"]["check"] = True  # the pre-flight reports the Latin-1 bytes but must not stop the run
    config_file.write_text(yaml.safe_dump(values))
    code, output = run_cli_here("train", str(config_file))
    assert code == 0, output
    assert "zz_latin1.txt: 1 undecodable byte(s), first at byte offset 15" in output.replace("\n", "")
    summary = json.loads((tmp_path / "runs" / "first" / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert after["perplexity"] < 0.8 * before["perplexity"]  # the domain was learned
    assert before["general"]["perplexity"] > 0 and after["general"]["perplexity"] > 0
    assert before["num_tokens"] == after["num_tokens"] > 0
    train_stats = summary["data"]["train"]
    assert train_stats["num_documents"] + summary["data"]["eval"]["num_documents"] == 13
    assert not train_stats["cache_reused"]
    held_out_files = summary["data"]["eval"]["sources"]  # one document per file: whole files are held out
    assert len(held_out_files) == 3 and not set(held_out_files) & set(train_stats["sources"])
    assert (tmp_path / "runs" / "first" / "final" / "model.safetensors").is_file()

    code, output = run_cli_here("train", str(config_file), "run_name=second", "train.max_steps=1")
    assert code == 0, output
    summary = json.loads((tmp_path / "runs" / "second" / "summary.json").read_text())
    assert summary["data"]["train"]["cache_reused"]
    assert summary["data"]["train"]["cache"] == train_stats["cache"]


def test_replay_mixes_general_blocks_into_training(tiny_llama, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    general = tmp_path / "general.txt"
    general.write_text("A plain sentence about the weather and the news of the day.\n" * 40)
    values = pretrain_config(tiny_llama, corpus, tmp_path, "replay")
    values["data"]["replay"] = {"path": str(general), "ratio": 0.25}
    config = build_config(values)
    tokenizer = load_tokenizer(str(tiny_llama), config.model)
    prepared = pretrain.prepare_data(config, tokenizer)
    domain = prepared.train.domain
    assert len(prepared.rows) == len(domain) + round(len(domain) / 3)
    replayed = prepared.collate([prepared.rows[len(domain)]])
    text = tokenizer.decode(replayed["input_ids"][0].tolist())
    assert "weather" in text and "harbour" not in text
    # Held-out documents are never in the training blocks.
    held = set(prepared.eval_blocks.documents.tolist())
    assert held and not held & set(domain.documents.tolist())


def test_jsonl_corpus_is_split_by_record(tiny_llama, tmp_path):
    rows = [{"text": f"record {i}: " + " ".join(WORDS[: 3 + i % 7])} for i in range(40)]
    train = write_jsonl(tmp_path / "records.jsonl", rows)
    config = build_config(pretrain_config(tiny_llama, train, tmp_path, "jsonl"))
    prepared = pretrain.prepare_data(config, load_tokenizer(str(tiny_llama), config.model))
    assert prepared.stats.train.num_documents == 30 and prepared.stats.eval.num_documents == 10
    assert len(prepared.eval) > 0 and prepared.eval[0].labels[0] == -100


def test_example_configs_load_and_point_at_existing_data():
    for name in ("pretrain_domain.yaml", "pretrain_shakespeare.yaml"):
        config = load_config(REPO / "examples" / name)
        assert config.task == "pretrain"
        if name == "pretrain_domain.yaml":
            assert (REPO / config.data.train).is_dir()
