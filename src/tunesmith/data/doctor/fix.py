"""`tunesmith data check --fix`: a cleaned copy of the data, and a list of what was removed and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.data.doctor.findings import CheckResult
from tunesmith.data.doctor.scan import source_of_message
from tunesmith.data.load import ErrorPolicy, iter_rows
from tunesmith.outputs import Claim, output_directory


def write_fixed(result: CheckResult, claim: Claim) -> dict[str, Any]:
    """A cleaned copy (JSONL per split) and removed.jsonl saying what went and why, built in a
    temporary folder and renamed into `claim.path` (the output-path rule); inputs untouched."""
    with output_directory(claim) as temp:
        summary = _write_fixed_files(result, temp)
    out = claim.path
    for split in result.specs:
        if isinstance(summary.get(split), dict):
            summary[split]["path"] = str(out / f"{split}.jsonl")
    summary["removed_list"] = str(out / "removed.jsonl")
    if claim.kept_as is not None:
        summary["kept_as"] = str(claim.kept_as)
    return summary


def _write_fixed_files(result: CheckResult, out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"removed": 0}
    with open(out / "removed.jsonl", "w", encoding="utf-8") as removed_file:
        for split, spec in result.specs.items():
            if spec is None:
                continue
            removals = result.scans[split].removed
            kept = removed = 0
            policy = ErrorPolicy(on_error="skip", max_skipped=10**12)
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                for row, source in iter_rows(spec, policy, f"data.{split}"):
                    reason = removals.get((source.path, source.line or -1))
                    if reason is None:
                        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                        kept += 1
                        continue
                    removed += 1
                    removed_file.write(
                        json.dumps(
                            {"split": split, "source": str(source), "reason": reason}, ensure_ascii=False
                        )
                        + "\n"
                    )
            for message in policy.skipped:
                removed += 1
                removed_file.write(
                    json.dumps(
                        {
                            "split": split,
                            "source": source_of_message(message),
                            "reason": "unreadable: " + message,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            summary[split] = {"kept": kept, "removed": removed}
            summary["removed"] += removed
    return summary
