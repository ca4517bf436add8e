"""Exporting a trained model: the merged HF directory, its model card, and a parity check.

The merged model must predict what base + adapter predicted: `probe_logits` runs the same probe
batch through both and the export refuses to finish when they differ. The GGUF export for
llama.cpp and Ollama builds on this merge: `gguf.py` (convert, check the file against the merged
model, write it), `converter.py` (llama.cpp's own converter, fetched from PyPI and run in a
subprocess) and `modelfile.py` (the Ollama Modelfile from the trained chat template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.progress import NoProgress, Progress
from tunesmith.train.rundir import (
    RunDir,
    atomic_directory,
    read_model_info,
    resolve_trained,
    write_model_info,
)

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


def _format_metrics(task: str, metrics: dict[str, Any]) -> str:
    """The metrics the task declares (tasks/__init__.py); none for a task this version does not know."""
    from tunesmith.tasks import metrics_line, task_info, task_names

    return metrics_line(task_info(task), metrics) if task in task_names() else ""


def model_card(run_dir: Path | None, info: dict[str, Any], parity: float | None) -> str:
    """A Hugging Face model card: what the model is, how it was made, what it scored, how to load it."""
    summary: dict[str, Any] = {}
    if run_dir is not None and RunDir(run_dir).summary.is_file():
        summary = json.loads(RunDir(run_dir).summary.read_text())
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
            lines.append(f"- held-out before: {_format_metrics(task, before)}")
        if after:
            lines.append(f"- held-out after: {_format_metrics(task, after)}")
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


def write_directory(model: Any, tokenizer: Any, out_dir: Path, card: str, info: dict[str, Any]) -> Path:
    """Save into a temporary folder, then rename: `out_dir` is either complete or absent."""
    with atomic_directory(out_dir) as temp:
        model.save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)
        (temp / CARD_FILE).write_text(card, encoding="utf-8")
        if info:
            write_model_info(temp, info)
    return out_dir


def merge_adapter(adapter_or_run: str | Path, out_dir: str | Path, progress: Progress | None = None) -> Path:
    """Merge a LoRA adapter into its base weights, check the merged model predicts what base +
    adapter predicted, and write it with a model card; the result loads with plain transformers.

    The base always loads in full precision (load_for_inference never quantises): a QLoRA
    adapter, trained on 4-bit weights, is merged into the full-precision base, never into the
    4-bit weights; DoRA's magnitudes merge the same way."""
    from tunesmith.models.inference import load_for_inference

    progress = progress or NoProgress()
    source = resolve_trained(adapter_or_run)
    model, tokenizer = load_for_inference(source, str(adapter_or_run), device="cpu")
    parity = None
    if hasattr(model, "merge_and_unload"):
        vocab_size = model.get_input_embeddings().weight.shape[0]
        reference = probe_logits(model, vocab_size)
        model = model.merge_and_unload()
        parity = parity_error(reference, probe_logits(model, vocab_size))
        if parity > PARITY_TOLERANCE:
            raise RuntimeError(
                f"merged model differs from base + adapter (max |logit difference| {parity:.2e} > "
                f"{PARITY_TOLERANCE}); nothing was written"
            )
        progress.message(f"parity check: merged == base + adapter (max |logit difference| {parity:.1e})")
    model.config.use_cache = True
    info = read_model_info(source)
    run = RunDir.of_model(source)
    card = model_card(run.path if run else None, info, parity)
    return write_directory(model, tokenizer, Path(out_dir), card, info)
