"""The data doctor's findings as HTML: one renderer for `tunesmith data check --html` and the run report.

Reads the JSON form of a `CheckReport` (eval/data_check.json may be old or hand-edited, so
every field is optional) and escapes every value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

from tunesmith.outputs import generator_tag

MAX_SHOWN_CHARS = 240  # one location or value in a cell
FINDINGS_PURPOSE = "data-check-html"  # `data check --html`: its generator tag makes it replaceable next time
JSON_PURPOSE = "data-check-json"  # `data check --json`

PAGE_STYLE = """
body { font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif; color:#0f172a; margin:24px auto; max-width:1100px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { border-bottom:1px solid #e2e8f0; padding:6px 10px; text-align:left; vertical-align:top; }
thead th { background:#f8fafc; }
.muted { color:#64748b; }
ul { margin:4px 0; padding-left:18px; font-size:13px; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600; background:#e5e7eb; }
.badge.info { background:#dcfce7; color:#166534; } .badge.error { background:#fee2e2; color:#991b1b; }
.badge.warning { background:#fef3c7; color:#92400e; }
.verdict { padding:8px 12px; border-radius:6px; }
.verdict.ok { background:#f0fdf4; } .verdict.warn { background:#fffbeb; } .verdict.bad { background:#fef2f2; }
"""


def verdict_level(verdict: str) -> str:
    """ok | warn | bad, for the doctor's verdicts: ready | ready with warnings | not ready."""
    lowered = verdict.lower()
    return "bad" if "not" in lowered or "error" in lowered else ("warn" if "warn" in lowered else "ok")


def render_findings(check: Mapping[str, Any]) -> str:
    """The verdict, what was checked, and one table row per finding (detail and places included)."""
    verdict = str(check.get("verdict", "?"))
    parts = [f'<p class="verdict {verdict_level(verdict)}">Verdict: <b>{escape(verdict)}</b></p>']
    stats = check.get("stats")
    if isinstance(stats, Mapping) and "num_train" in stats:
        parts.append(
            f'<p class="muted">{escape(str(check.get("task", "")))} data: {escape(str(stats.get("num_train")))} '
            f"train / {escape(str(stats.get('num_eval', 0)))} eval records</p>"
        )
    rows = [_row(f) for f in check.get("findings") or [] if isinstance(f, Mapping)]
    if not rows:
        parts.append('<p class="muted">No findings.</p>')
        return "".join(parts)
    parts.append(
        '<table class="findings"><thead><tr><th>severity</th><th>finding</th><th>count</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return "".join(parts)


def findings_json(check: Mapping[str, Any]) -> str:
    """`data check --json`: the findings, led by the generator tag (a later run may replace the file)."""
    return json.dumps({"generator": generator_tag(JSON_PURPOSE), **check}, indent=2, ensure_ascii=False)


def findings_page(check: Mapping[str, Any]) -> str:
    """A self-contained page (`data check --html`)."""
    verdict = escape(str(check.get("verdict", "?")))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta name='generator' content='{generator_tag(FINDINGS_PURPOSE)}'><title>Data check: {verdict}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><section id='data-check'><h1>Data check: {verdict}</h1>"
        f"{render_findings(check)}</section></body></html>"
    )


def _row(finding: Mapping[str, Any]) -> str:
    severity = escape(str(finding.get("severity", "")))
    title = escape(str(finding.get("title", finding.get("id", ""))))
    detail = escape(str(finding.get("detail", "")))
    places = "".join(f"<li>{escape(_short(e))}</li>" for e in finding.get("examples") or [])
    count = finding.get("count")
    shown_count = f"{count:,}" if isinstance(count, int) else escape(str(count if count is not None else "–"))
    return (
        f'<tr><td><span class="badge {severity}">{severity}</span></td>'
        f'<td><b>{title}</b><div class="muted">{detail}</div>{f"<ul>{places}</ul>" if places else ""}</td>'
        f"<td>{shown_count}</td></tr>"
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + " …"
