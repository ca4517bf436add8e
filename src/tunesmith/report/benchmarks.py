"""The report's benchmarks section: base vs tuned per harness task and metric, with the verdicts."""

from __future__ import annotations

from html import escape
from typing import Any

from tunesmith.evaluate.benchmarks import NOISE_Z, compare_benchmarks
from tunesmith.report.format import _section, _table, fmt


def _with_stderr(value: Any, stderr: Any) -> str:
    return fmt(value) + (f' <span class="muted">± {fmt(stderr)}</span>' if stderr is not None else "")


def benchmarks_section(run: dict[str, Any]) -> str:
    before = (run["before"] or {}).get("benchmarks") or {}
    after = (run["after"] or {}).get("benchmarks") or {}
    if not before and not after:
        return ""
    rows = run["summary"].get("benchmarks") or compare_benchmarks(before, after)
    table_rows = []
    for row in rows:
        level = {"better": "ok", "worse": "warn"}.get(row["verdict"], "")
        verdict = (
            f'<span class="verdict {level}">{escape(row["verdict"])}</span>' if level else row["verdict"]
        )
        how = (
            f"paired over {row['num_paired']} examples"
            if row.get("paired")
            else "from the two standard errors"
        )
        table_rows.append(
            [
                escape(row["task"]),
                escape(row["metric"]),
                _with_stderr(row["base"], row["base_stderr"]),
                _with_stderr(row["tuned"], row["tuned_stderr"]),
                _with_stderr(row["change"], row["change_stderr"]),
                f'{verdict} <span class="muted">({how})</span>',
            ]
        )
    if not rows:  # one side only (eval.before or eval.after off): its figures
        for side, results in (("base", before), ("tuned", after)):
            for task, values in (results.get("tasks") or {}).items():
                for key, metric in values["metrics"].items():
                    cells = [_with_stderr(metric["value"], metric["stderr"]), ""]
                    table_rows.append(
                        [escape(task), escape(key), *(cells if side == "base" else cells[::-1]), "", ""]
                    )
    settings = after.get("settings") or before.get("settings") or {}
    note = (
        f"EleutherAI's lm-evaluation-harness {escape(str(after.get('harness') or before.get('harness') or ''))} "
        f"on the model in memory, the same settings before and after ({escape(settings_text(settings))}). "
        f"A change counts as better or worse only beyond {NOISE_Z} standard errors of the difference."
    )
    body = _table(["task", "metric", "base", "tuned", "change", "verdict"], table_rows, "numbers")
    return _section("benchmarks", "Benchmarks", body, note)


def settings_text(settings: dict[str, Any]) -> str:
    """eval.benchmarks in words: "tasks arc_easy, gsm8k; limit 200; few-shot: each task's own; ..."."""
    tasks = settings.get("tasks") or []
    limit = settings.get("limit")
    shots = settings.get("num_fewshot")
    include = settings.get("include_path")
    parts = [
        f"tasks {', '.join(tasks)}" if tasks else "",
        f"limit {limit:g} per task" if isinstance(limit, (int, float)) else "every example",
        "few-shot: each task's own" if shots is None else f"{shots}-shot",
        f"batch size {settings['batch_size']}" if settings.get("batch_size") else "",
        "chat template on" if settings.get("chat_template") else "plain prompts (no chat template)",
        f"task YAMLs from {', '.join(include) if isinstance(include, list) else include}" if include else "",
    ]
    return "; ".join(part for part in parts if part)
