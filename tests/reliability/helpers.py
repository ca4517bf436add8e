"""Helpers shared by the reliability and security tests: small data, one-call training runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..conftest import tiny_config, write_jsonl

WORDS = ["red", "blue", "green", "small", "large", "happy", "quiet", "fast", "slow", "warm"]


def instruct_file(directory: Path, num_rows: int = 40) -> Path:
    """Alpaca rows of varied length (so batches need padding)."""
    rows = []
    for i in range(num_rows):
        word = WORDS[i % len(WORDS)]
        rows.append(
            {
                "instruction": f"Repeat the word {word} {i % 4 + 1} times.",
                "input": "",
                "output": " ".join([word] * (i % 4 + 1)),
            }
        )
    return write_jsonl(directory / "train.jsonl", rows)


def make_config(model_dir: Path, train_file: Path, output_dir: Path, **overrides: Any) -> Any:
    from tunesmith.config import build_config

    return build_config(tiny_config(model_dir, train_file, output_dir, **overrides))


def step_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step training records of metrics.jsonl (not eval or events)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if "loss" in r and "lr" in r]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = (
        "adapter_model.safetensors"
        if (final / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(str(final / name))


def all_text(directory: Path) -> str:
    """Every readable file under `directory`, as one string (for secret scans)."""
    parts = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


class RecordingProgress:
    """A tunesmith.progress.Progress that keeps the messages and calls `on_step` after each step."""

    def __init__(self, on_step: Any = None):
        self.lines: list[str] = []
        self.on_step = on_step

    def start(self, total: int, done: int = 0, title: str = "train") -> None:
        pass

    def step(self, step: int, record: dict[str, Any]) -> None:
        if self.on_step is not None:
            self.on_step(step, record)

    def message(self, text: str, level: str = "info") -> None:
        self.lines.append(text)

    def close(self) -> None:
        pass
