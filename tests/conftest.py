"""Shared fixtures: tiny random models built locally (no downloads), sample data, the shared folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "tunesmith" / "assets"
SHARED = REPO.parent / "shared"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _own_outputs_ledger(tmp_path_factory, monkeypatch):
    """Each test gets its own ledger of written files (tunesmith/outputs.py), not the user's."""
    import tunesmith.outputs

    ledger = tmp_path_factory.mktemp("ledger") / "outputs.json"
    monkeypatch.setattr(tunesmith.outputs, "ledger_path", lambda: ledger)


def _copy_tokenizer(target: Path) -> None:
    for name in TOKENIZER_FILES:
        source = ASSETS / "base-model" / name
        if source.is_file():
            shutil.copy(source, target / name)


def build_tiny_model(directory: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A random tiny causal LM of the given architecture with the embedded tokenizer."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    directory.mkdir(parents=True, exist_ok=True)
    _copy_tokenizer(directory)
    vocab = len(AutoTokenizer.from_pretrained(directory))
    torch.manual_seed(seed)
    # Llama and Qwen2 share the decoder shape; they differ in tied embeddings and the attention bias.
    decoder_shape = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**decoder_shape, tie_word_embeddings=True))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**decoder_shape, tie_word_embeddings=False))
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, eos_token_id=0
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'llama': dir, 'qwen2': dir, 'gpt2': dir} of tiny random models (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["llama"]


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the checkout")
    return SHARED


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def instruct_rows() -> list[dict]:
    """A small instruction set: alpaca-shaped, answers long enough to train on."""
    rows = []
    words = ["red", "blue", "green", "small", "large", "happy", "quiet", "fast", "slow", "warm"]
    for i in range(40):
        word = words[i % len(words)]
        rows.append(
            {
                "instruction": f"Repeat the word {word} {i % 3 + 1} times.",
                "input": "",
                "output": " ".join([word] * (i % 3 + 1)),
            }
        )
    return rows


def tiny_config(model_dir: Path, train_file: Path, output_dir: Path, **overrides: object) -> dict:
    """A config dict for a fast CPU run on a tiny model."""
    config = {
        "task": "instruct",
        "model": {"name": str(model_dir), "device": "cpu"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train_file), "max_seq_len": 128, "eval_fraction": 0.1, "check": False},
        "train": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "eval_every": 0, "seed": 0},
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(output_dir),
        "run_name": "run",
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[section] = value
    return config


def train_task_steps(task, config, steps: int = 4):
    """Train a task module for `steps` steps through the real loop.

    Returns (model, tokenizer, prepared, parameters before training, logged records)."""
    from tunesmith.data.pack import RowSchedule
    from tunesmith.models.load import load_tokenizer
    from tunesmith.train.checkpoint import TrainerState
    from tunesmith.train.loop import LoopSettings, train_loop
    from tunesmith.train.optim import build_optimizer, build_scheduler

    tokenizer = load_tokenizer(config.model.name, config.model)
    prepared = task.prepare_data(config, tokenizer)
    model = task.build_model(config.model.name, config, "cpu", prepared)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = task.make_loss(model, config)
    optimizer = build_optimizer(loss, config.train, "cpu")
    scheduler = build_scheduler(optimizer, config.train, steps)
    schedule = RowSchedule(len(prepared.rows), config.train.batch_size, 1, 0)
    records: list[dict] = []
    train_loop(
        loss,
        optimizer,
        scheduler,
        lambda s: [prepared.collate([prepared.rows[i] for i in m]) for m in schedule.rows_for_step(s)],
        LoopSettings(total_steps=steps),
        TrainerState(0, steps),
        records.append,
    )
    return model, tokenizer, prepared, before, records
