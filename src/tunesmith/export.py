"""Exporting a trained model: the merged HF directory, its model card, and a parity check.

The merged model must predict what base + adapter predicted: `parity_probe` runs the same probe
batch through both and the export refuses to finish when they differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

PARITY_TOLERANCE = 1e-4  # max |logit difference| in fp32; merging only reorders the same sums
CARD_FILE = "README.md"


@torch.no_grad()
def probe_logits(model: Any, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Logits of a fixed random batch of token ids (2 x 32), in fp32."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (2, 32), generator=generator)
    device = next(model.parameters()).device
    return model(input_ids=input_ids.to(device), use_cache=False).logits.float().cpu()


def parity_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((before - after).abs().max())


def _format_metrics(metrics: dict[str, Any]) -> str:
    keys = ("loss", "perplexity", "token_accuracy", "accuracy", "macro_f1", "rouge_l")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def model_card(run_dir: Path | None, info: dict[str, Any], parity: float | None) -> str:
    """A Hugging Face model card: what the model is, how it was made, what it scored, how to load it."""
    summary: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    base = info.get("base_model") or summary.get("base_model", "unknown")
    task = info.get("task") or summary.get("task", "unknown")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [tunesmith]",
        "---",
        "",
        "# Finetuned with tunesmith",
        "",
        f"- base model: `{base}`",
        f"- task: `{task}`; method: `{info.get('method', 'unknown')}` (adapter merged into the weights)",
    ]
    if summary:
        lines.append(
            f"- training: {summary.get('steps', '?')} optimizer steps, {summary.get('seconds', 0):.0f} s"
        )
        before, after = summary.get("before") or {}, summary.get("after") or {}
        if before:
            lines.append(f"- held-out before: {_format_metrics(before)}")
        if after:
            lines.append(f"- held-out after: {_format_metrics(after)}")
        general_before = (before.get("general") or {}).get("perplexity")
        general_after = (after.get("general") or {}).get("perplexity")
        if general_before and general_after:
            lines.append(
                f"- general-text perplexity (forgetting probe): {general_before:.2f} -> {general_after:.2f}"
            )
    if parity is not None:
        lines.append(f"- parity check: merged vs base + adapter, max |logit difference| {parity:.2e}")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)  # carries the chat template used in training",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_directory(model: Any, tokenizer: Any, out_dir: Path, card: str, extra: list[Path]) -> Path:
    """Save into a temporary folder, then rename: `out_dir` is either complete or absent."""
    temp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    model.save_pretrained(temp, safe_serialization=True)
    tokenizer.save_pretrained(temp)
    (temp / CARD_FILE).write_text(card, encoding="utf-8")
    for path in extra:
        if path.is_file():
            shutil.copy(path, temp / path.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    temp.rename(out_dir)
    return out_dir
