"""report.html: one self-contained page per run, built from the run directory's files alone.

Plots are inline SVG drawn by matplotlib (Agg), the styles are inline, there is no script and
no link to anything outside the file, so the page opens offline, in a mail attachment or an
archived run years later. Every section tolerates its files being absent (evaluation turned
off, an interrupted run, an older run): it says what is missing instead of failing.
`tunesmith report RUN` rebuilds the page at any time.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from tunesmith.evaluate.compare import compare
from tunesmith.outputs import claim_output, generator_tag
from tunesmith.report.benchmarks import benchmarks_section
from tunesmith.report.format import fmt  # noqa: F401  (re-exported: the CLI's number format)
from tunesmith.report.read import load_run
from tunesmith.report.sections import (
    _classify_section,
    _config_section,
    _data_section,
    _examples_section,
    _forgetting_section,
    _generations_section,
    _metrics_section,
    _prediction_section,
    _speed_section,
    _summary,
    _training_curves,
)
from tunesmith.train.rundir import RunDir, atomic_write

REPORT_PURPOSE = "report"  # the generator tag of report.html: `tunesmith report` replaces only its own
LEGACY_FOOTER = "Built by tunesmith from the run directory"

STYLE = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --soft:#f8fafc; --blue:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--ink); background:#f1f5f9; }
header { background:#0f172a; color:#fff; padding:22px 32px 14px; }
header h1 { margin:0; font-size:24px; font-weight:650; }
header .sub { color:#cbd5e1; margin-top:2px; }
nav { position:sticky; top:0; z-index:1; background:#1e293b; padding:8px 32px; display:flex; flex-wrap:wrap; gap:18px; }
nav a { color:#e2e8f0; text-decoration:none; font-size:14px; }
nav a:hover { color:#fff; text-decoration:underline; }
main { max-width:1240px; margin:0 auto; padding:20px 24px 60px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 24px; margin:18px 0; }
h2 { margin:0 0 8px; font-size:19px; }
h3 { margin:18px 0 8px; font-size:15px; }
.note { color:var(--muted); margin:0 0 12px; font-size:14px; }
.missing { color:#92400e; background:#fffbeb; border:1px solid #fde68a; border-radius:6px; padding:8px 12px; }
.muted { color:var(--muted); }
dl.facts { display:flex; flex-wrap:wrap; gap:10px 36px; margin:4px 0 16px; }
dl.facts div { min-width:120px; } dt { color:var(--muted); font-size:13px; } dd { margin:0; font-weight:600; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(220px,1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; background:var(--soft); }
.card .label { color:var(--muted); font-size:13px; }
.card .value { font-size:26px; font-weight:650; }
.change { font-size:13px; color:var(--muted); }
.change.better { color:#15803d; } .change.worse { color:#b91c1c; }
table { border-collapse:collapse; width:100%; margin:6px 0 12px; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:6px 10px; text-align:left; vertical-align:top; }
thead th { background:var(--soft); font-weight:600; }
table.numbers td:not(:first-child) { font-variant-numeric:tabular-nums; }
table.texts td { width:25%; }
table.examples td { width:40%; } table.examples td:nth-child(n+3) { width:6%; white-space:nowrap; }
table.keyvalues { width:auto; min-width:50%; } table.keyvalues thead { display:none; }
table.keyvalues td:first-child { color:var(--muted); white-space:nowrap; }
.text { white-space:pre-wrap; word-break:break-word; max-height:260px; overflow:auto; }
.score { margin-top:4px; font-size:12px; color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600;
         background:#e5e7eb; }
.badge.better, .badge.info { background:#dcfce7; color:#166534; }
.badge.worse, .badge.error { background:#fee2e2; color:#991b1b; }
.badge.warning { background:#fef3c7; color:#92400e; }
.verdict { padding:8px 12px; border-radius:6px; }
.verdict.ok { background:#f0fdf4; } .verdict.warn { background:#fffbeb; } .verdict.bad { background:#fef2f2; }
figure.plot { margin:8px 0 12px; } figure.plot svg { width:100%; max-width:1000px; height:auto; }
.matrices { display:flex; flex-wrap:wrap; gap:24px; } .matrix { flex:1 1 360px; }
table.confusion td { text-align:center; font-variant-numeric:tabular-nums; min-width:48px; }
table.confusion .corner { font-weight:400; color:var(--muted); font-size:12px; }
.columns { display:grid; grid-template-columns:minmax(0,1fr) minmax(0,1fr); gap:24px; }
pre { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:10px 12px; font-size:12.5px;
      overflow:auto; max-height:520px; }
ul { margin:4px 0; padding-left:18px; font-size:13px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding-bottom:24px; }
"""


def render(run: dict[str, Any]) -> str:
    """The whole page as one string."""
    before, after = run["before"] or {}, run["after"] or {}
    comparison = compare(before, after)
    rows = comparison["metrics"]
    summary = run["summary"]
    task = str(summary.get("task") or run["task"].get("task") or "")
    sections = [
        _summary(run, rows),
        _training_curves(run),
        _metrics_section(run, rows),
        _forgetting_section(run),
        benchmarks_section(run),
        _generations_section(comparison),
        _classify_section(run),  # empty unless the evaluations hold confusion matrices or per-class scores
        _examples_section(comparison),
        _data_section(run),
        _speed_section(run),
        _prediction_section(run),
        _config_section(run),
    ]
    sections = [s for s in sections if s]
    titles = {
        "summary": "Summary",
        "curves": "Curves",
        "metrics": "Before/after",
        "forgetting": "Forgetting",
        "benchmarks": "Benchmarks",
        "generations": "Generations",
        "classes": "Classes",
        "examples": "Fixed/broken",
        "data": "Data",
        "speed": "Speed",
        "prediction": "Predicted",
        "config": "Config",
    }
    links = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in titles.items()
        if any(s.startswith(f'<section id="{anchor}"') for s in sections)
    )
    base = escape(str(summary.get("base_model", "")))
    subtitle = " · ".join(part for part in (escape(task), base and f"base {base}") if part)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="{generator_tag(REPORT_PURPOSE)}">'
        # No favicon request: the page must not touch the network or the disk around it.
        '<link rel="icon" href="data:,">'
        f"<title>tunesmith run {escape(run['name'])}</title><style>{STYLE}</style></head><body>"
        f'<header><h1>tunesmith run: {escape(run["name"])}</h1><div class="sub">{subtitle}</div></header>'
        f"<nav>{links}</nav><main>{''.join(sections)}</main>"
        "<footer>Built by tunesmith from the run directory; rebuild with <code>tunesmith report RUN</code>.</footer>"
        "</body></html>\n"
    )


def _legacy_report(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and LEGACY_FOOTER in path.read_text(errors="replace")
    except OSError:
        return False


def write_report(run_dir: Path) -> Path:
    """Build run_dir/report.html from the run's files; returns its path. A report.html that
    tunesmith did not write (no generator tag: a file of the user's) is refused, not replaced."""
    run = RunDir(Path(run_dir))
    if not _legacy_report(run.report):  # reports of earlier versions carry the footer, not the tag
        # A report.html of the user's is refused, never replaced.
        claim_output(run.report, REPORT_PURPOSE, directory=False, flag="report", inside_run=True)
    return atomic_write(run.report, render(load_run(run.path)))
