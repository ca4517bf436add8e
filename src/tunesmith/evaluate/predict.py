"""`tunesmith predict`: a trained classifier's labels for every row of a file, written as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.progress import NoProgress, Progress


def predict_file(
    model_or_run: str,
    data: str,
    out: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Classify every row of `data`; writes a CSV with text, predicted label(s) and one probability
    column per label. Returns {rows, out, accuracy (if labelled)}. `out` follows the output-path
    rule: a CSV carries no tag, so it is replaced only while it holds exactly what an earlier
    `predict` wrote (the outputs ledger); any other existing file needs `overwrite` (moved aside)."""
    from tunesmith.models.load import select_device
    from tunesmith.outputs import claim_output, write_output_file
    from tunesmith.tasks.classify import load_classifier, predict_rows, read_unlabeled
    from tunesmith.train.rundir import guarded_write, resolve_trained

    progress = progress or NoProgress()
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    device = select_device(device)
    final_dir = resolve_trained(model_or_run)
    if not final_dir.is_dir():
        raise UserError(f"{model_or_run}: not a run or model directory")
    claim = claim_output(
        out, "predictions", inputs=[data, model_or_run, final_dir], overwrite=overwrite, directory=False
    )
    model, tokenizer, info = load_classifier(final_dir, device)
    records, labelled = read_unlabeled(data, info)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress.step(done, {})

    progress.start(len(records), 0, "predict")
    try:
        rows = predict_rows(model, tokenizer, info, records, batch_size, device, on_batch=advance)
    finally:
        progress.close()
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with guarded_write(claim.path):
        written = write_output_file(claim, text.getvalue())
    result: dict[str, Any] = {"rows": len(rows), "out": str(written)}
    if claim.kept_as is not None:
        result["kept_as"] = str(claim.kept_as)
    if labelled:
        result["accuracy"] = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    return result
