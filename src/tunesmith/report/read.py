"""Reading a run directory for the report: every file through RunDir, metrics.jsonl through the
one reader (rundir.read_metrics); an absent or unreadable file becomes None and a note."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.train.rundir import RunDir, read_metrics


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: unreadable ({exc}); its section is left out")
        return None


def _latest_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step records, the last one per (step, kind): a resumed run rewrites steps after its checkpoint."""
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for record in records:
        if not isinstance(record.get("step"), int) or "event" in record:
            continue
        kind = "eval" if any(k.startswith("eval_") for k in record) else "train"
        latest[(record["step"], kind)] = record
    return [latest[key] for key in sorted(latest)]


def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, read from the run directory (missing files become None)."""
    run = RunDir(Path(run_dir))
    problems: list[str] = []
    return {
        "name": run.name,
        "summary": _read_json(run.summary, problems) or {},
        "before": _read_json(run.eval_file("before"), problems),
        "after": _read_json(run.eval_file("after"), problems),
        "data_check": _read_json(run.eval_file("data_check"), problems),
        "environment": _read_json(run.environment, problems),
        "config": run.config.read_text(encoding="utf-8", errors="replace") if run.config.is_file() else None,
        "task": _read_json(run.marker, problems) or {},
        "metrics": _latest_steps(read_metrics(run.path, problems)),
        "problems": problems,
    }
