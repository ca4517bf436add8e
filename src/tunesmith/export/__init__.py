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

from tunesmith.errors import UserError
from tunesmith.outputs import claim_output, output_directory
from tunesmith.progress import NoProgress, Progress
from tunesmith.train.rundir import (
    RunDir,
    guarded_write,
    read_model_info,
    resolve_trained,
    write_model_info,
)

# Merging only reorders the same fp32 sums, so merged and unmerged logits differ by rounding, which
# grows with the logits' size: the bar is PARITY_RTOL x the largest |logit| (at least 1). Measured:
# 1.15e-4 on SmolLM2-135M after a full-vocabulary LoRA run (logits up to ~30: a bar of 6e-4); a wrong
# merge (scaling, a layer left out) moves logits by 1e-1 and more.
PARITY_RTOL = 2e-5
CARD_FILE = "README.md"


@torch.no_grad()
def probe_logits(model: Any, vocab_size: int, seed: int = 0, avoid: int | None = None) -> torch.Tensor:
    """Logits of a fixed random batch of token ids (2 x 32), in fp32; `avoid` (a classifier's pad
    id, which transformers' pooling looks for) never appears in it."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (2, 32), generator=generator)
    if avoid is not None:
        input_ids[input_ids == avoid] = (avoid + 1) % vocab_size
    device = next(model.parameters()).device
    batch = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device)}
    return model(**batch, use_cache=False).logits.float().cpu()


def parity_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((before - after).abs().max())


def parity_bar(reference: torch.Tensor) -> float:
    """The largest |logit difference| rounding explains for logits of this size (PARITY_RTOL)."""
    return PARITY_RTOL * max(1.0, float(reference.abs().max()))


def _format_metrics(task: str, metrics: dict[str, Any]) -> str:
    """The metrics the task declares (tasks/__init__.py); none for a task this version does not know."""
    from tunesmith.tasks import metrics_line, task_info, task_names

    return metrics_line(task_info(task), metrics) if task in task_names() else ""


def model_card(
    run_dir: Path | None, info: dict[str, Any], parity: float | None, class_name: str = "ForCausalLM"
) -> str:
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
        if summary.get("benchmarks"):
            from tunesmith.evaluate.benchmarks import NOISE_Z, benchmark_lines

            lines += [
                "",
                f"## Benchmarks (lm-evaluation-harness; base -> tuned, verdict at {NOISE_Z} standard errors)",
                "",
            ]
            lines += [f"- {line}" for line in benchmark_lines(summary["benchmarks"])]
            lines.append("")
    if parity is not None:
        lines.append(f"- parity check: merged vs base + adapter, max |logit difference| {parity:.2e}")
    auto = (
        "AutoModelForSequenceClassification"
        if class_name.endswith("ForSequenceClassification")
        else "AutoModelForCausalLM"
    )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)  # carries the chat template used in training",
        "```",
        "",
    ]
    return "\n".join(lines)


EXPORT_PURPOSE = "export"  # the output marker of an exported HF directory (tunesmith.outputs)


def export_inputs(adapter_or_run: str | Path, source: Path) -> list[Path]:
    """What an export reads and so must never replace: the run or adapter, and a local base model."""
    inputs = [Path(adapter_or_run), source]
    run = RunDir.of_model(source)
    if run is not None:
        inputs.append(run.path)
    from tunesmith.models.load import read_adapter_config

    base = (read_adapter_config(source) or {}).get("base_model_name_or_path")
    if base and Path(base).expanduser().is_dir():
        inputs.append(Path(base))
    return inputs


def merge_adapter(
    adapter_or_run: str | Path,
    out_dir: str | Path,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge a LoRA adapter into its base weights, check the merged model predicts what base +
    adapter predicted, and write it to `out_dir` with a model card; the result loads with plain
    transformers (a classifier with its trained head: AutoModelForSequenceClassification).

    `out_dir` follows the output-path rule (tunesmith.outputs): a new path, an empty folder or an
    earlier export; anything else is refused (`overwrite`: moved aside, never deleted)."""
    progress = progress or NoProgress()
    source = resolve_trained(adapter_or_run)
    check_exportable(source, adapter_or_run)
    claim = claim_output(
        out_dir, EXPORT_PURPOSE, inputs=export_inputs(adapter_or_run, source), overwrite=overwrite
    )
    with (
        guarded_write(claim.path, note=f" (nothing replaced {claim.path.name}/)"),
        output_directory(claim) as temp,
    ):
        merge_into(source, temp, progress)
    if claim.kept_as is not None:
        progress.message(f"--overwrite: the old {claim.path} is kept as {claim.kept_as}")
    return claim.path


def check_exportable(source: Path, given: str | Path) -> None:
    """A run, adapter or model directory whose adapter config and metadata read cleanly (a damaged
    one is a UserError naming the file, before any output path is touched)."""
    from tunesmith.models.load import read_adapter_config

    if not (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
        raise UserError(
            f"{given}: not a run, adapter or model directory (no config.json or adapter_config.json)"
        )
    read_adapter_config(source)
    read_model_info(source)


def load_trained(source: Path, name: str, device: str = "cpu") -> tuple[Any, Any]:
    """The trained model as its task saved it (a causal LM, or a classifier with its head)."""
    from tunesmith.tasks.trained import trained_model_task

    task = trained_model_task(source)
    if task is not None and task.load_trained is not None:
        return task.load_trained(source, device)
    from tunesmith.models.inference import load_for_inference

    return load_for_inference(source, name, device=device)


def merge_into(source: Path, folder: Path, progress: Progress) -> None:
    """Merge the adapter of `source` (if any), parity-check it and save into `folder` (empty)."""
    model, tokenizer = load_trained(source, str(source))
    vocab_size = model.get_input_embeddings().weight.shape[0]
    pad_id = getattr(model.config, "pad_token_id", None)
    reference = probe_logits(model, vocab_size, avoid=pad_id)
    parity = None
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        parity = parity_error(reference, probe_logits(model, vocab_size, avoid=pad_id))
        if parity > parity_bar(reference):
            raise RuntimeError(
                f"merged model differs from base + adapter (max |logit difference| {parity:.2e} > "
                f"{parity_bar(reference):.1e}, what rounding explains); nothing was written"
            )
        progress.message(f"parity check: merged == base + adapter (max |logit difference| {parity:.1e})")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True
    info = read_model_info(source)
    run = RunDir.of_model(source)
    card = model_card(run.path if run else None, info, parity, type(model).__name__)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    if info:
        write_model_info(folder, info)
    reloaded = reload_error(folder, type(model).__name__, reference, vocab_size, pad_id)
    if reloaded is not None and reloaded > parity_bar(reference):
        raise RuntimeError(
            f"the exported model, loaded back with transformers, differs from the trained one (max |logit "
            f"difference| {reloaded:.2e}); nothing was written"
        )


def reload_error(
    folder: Path, class_name: str, reference: torch.Tensor, vocab_size: int, pad_id: int | None
) -> float | None:
    """A head model (a classifier) is loaded back from `folder` with plain transformers and must
    give the trained model's logits: the head travelled with the weights. Causal LMs: None (their
    merge is checked in memory)."""
    if not class_name.endswith("ForSequenceClassification"):
        return None
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    reloaded.eval()
    return parity_error(reference, probe_logits(reloaded, vocab_size, avoid=pad_id))
