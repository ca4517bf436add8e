"""report.html: one self-contained page per run, built from the run directory's files alone.

Plots are inline SVG drawn by matplotlib (Agg), the styles are inline, there is no script and
no link to anything outside the file, so the page opens offline, in a mail attachment or an
archived run years later. Every section tolerates its files being absent (evaluation turned
off, an interrupted run, an older run): it says what is missing instead of failing.
`tunesmith report RUN` rebuilds the page at any time.
"""

from __future__ import annotations

import io
import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

from tunesmith.evaluate.compare import compare

REPORT_FILE = "report.html"
MAX_TEXT_CHARS = 1200  # a prompt or generation longer than this is cut in the tables
HEADLINE_METRICS = (
    "loss",
    "perplexity",
    "token_accuracy",
    "exact_match",
    "rouge_l",
    "accuracy",
    "macro_f1",
    "general.perplexity",
)
BASE_COLOR, TUNED_COLOR, LR_COLOR = "#94a3b8", "#2563eb", "#d97706"


# --------------------------------------------------------------------------------------------
# Reading the run


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: unreadable ({exc}); its section is left out")
        return None


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl records, the last one per (step, kind): a resumed run rewrites steps after its checkpoint."""
    if not path.is_file():
        return []
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    bad_lines = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad_lines += 1  # e.g. the last line of a run killed mid-write
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "event" in record:
            continue
        kind = "eval" if any(k.startswith("eval_") for k in record) else "train"
        latest[(record["step"], kind)] = record
    if bad_lines:
        problems.append(f"metrics.jsonl: {bad_lines} unreadable line(s) skipped")
    return [latest[key] for key in sorted(latest)]


def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, read from the run directory (missing files become None)."""
    problems: list[str] = []
    eval_dir = run_dir / "eval"
    config_path = run_dir / "config.yaml"
    return {
        "name": run_dir.name,
        "summary": _read_json(run_dir / "summary.json", problems) or {},
        "before": _read_json(eval_dir / "before.json", problems),
        "after": _read_json(eval_dir / "after.json", problems),
        "data_check": _read_json(eval_dir / "data_check.json", problems),
        "environment": _read_json(run_dir / "environment.json", problems),
        "config": config_path.read_text(encoding="utf-8", errors="replace")
        if config_path.is_file()
        else None,
        "task": _read_json(run_dir / "tunesmith-run.json", problems) or {},
        "metrics": _read_metrics(run_dir / "metrics.jsonl", problems),
        "problems": problems,
    }


# --------------------------------------------------------------------------------------------
# Small formatting helpers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt(value: Any) -> str:
    """A number as people read it: thousands separated, about four significant digits."""
    number = _number(value)
    if number is None:
        return "–" if value is None else escape(str(value))
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(number)
    if magnitude >= 1000:
        return f"{number:,.0f}"
    if magnitude >= 100:
        return f"{number:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{number:.3f}"
    if magnitude >= 1e-3:
        return f"{number:.4f}"
    return f"{number:.2e}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def _duration(seconds: Any) -> str:
    number = _number(seconds)
    if number is None:
        return "–"
    minutes, secs = divmod(int(round(number)), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{number:.1f}s")
    )


def _bytes(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{number:.1f} {unit}" if unit != "B" else f"{int(number)} B"
        number /= 1024
    return "–"


def _text(value: Any) -> str:
    """Escaped text for a table cell, cut at MAX_TEXT_CHARS."""
    if value is None:
        return '<span class="muted">–</span>'
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text.strip():
        return '<span class="muted">(empty)</span>'
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS] + f" … [{len(text) - MAX_TEXT_CHARS:,} more characters]"
    return f'<div class="text">{escape(text)}</div>'


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(anchor: str, title: str, body: str, note: str = "") -> str:
    intro = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{intro}{body}</section>'


def _missing(what: str) -> str:
    return f'<p class="missing">{what}</p>'


# --------------------------------------------------------------------------------------------
# Plots: matplotlib figures as inline SVG


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(figure: Any, name: str) -> str:
    """The figure as an <svg> element; ids are salted with the plot name so figures never share one."""
    import matplotlib
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]
    return f'<figure class="plot" id="plot-{name}">{svg}</figure>'


def _style_axes(axes: Any) -> None:
    axes.spines["top"].set_visible(False)
    axes.grid(True, color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)


def _curves(
    series: list[tuple[str, list[float], list[float], dict[str, Any]]],
    lr: tuple[list, list] | None,
    ylabel: str,
    name: str,
    log_scale: bool = False,
) -> str:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 3.6))
    _style_axes(axes)
    for label, steps, values, style in series:
        axes.plot(steps, values, label=label, **style)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    if log_scale:
        axes.set_yscale("log")
    handles, labels = axes.get_legend_handles_labels()
    if lr is not None and lr[0]:
        twin = axes.twinx()
        twin.plot(lr[0], lr[1], color=LR_COLOR, linewidth=1.2, linestyle=":", label="learning rate")
        twin.set_ylabel("learning rate", color=LR_COLOR)
        twin.tick_params(axis="y", colors=LR_COLOR)
        twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        twin.spines["top"].set_visible(False)
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    axes.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(labels),
        frameon=False,
        fontsize=9,
    )
    return _svg(figure, name)


def _headline_bars(rows: list[dict[str, Any]], name: str) -> str:
    """Small multiples: one pair of bars (base, tuned) per headline metric, each on its own scale."""
    plt = _pyplot()
    shown = [
        r
        for r in rows
        if r["metric"] in HEADLINE_METRICS and r["before"] is not None and r["after"] is not None
    ]
    if plt is None or not shown:
        return ""
    figure, axes_list = plt.subplots(1, len(shown), figsize=(min(2.2 * len(shown), 11), 2.7), squeeze=False)
    for axes, row in zip(axes_list[0], shown, strict=True):
        values = [row["before"], row["after"]]
        bars = axes.bar(["base", "tuned"], values, color=[BASE_COLOR, TUNED_COLOR], width=0.6)
        for bar, value in zip(bars, values, strict=True):
            axes.annotate(
                fmt(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        verdict = {"better": " ✓", "worse": " ✗"}.get(row["verdict"], "")
        axes.set_title(
            row["metric"].replace("general.", "general ") + verdict,
            fontsize=9,
            color={"better": "#15803d", "worse": "#b91c1c"}.get(row["verdict"], "#111827"),
        )
        axes.spines[["top", "right"]].set_visible(False)
        axes.set_yticks([])
        axes.set_ylim(0, max(max(values), 1e-9) * 1.22)
        axes.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    return _svg(figure, name)


# --------------------------------------------------------------------------------------------
# Sections


def _summary(run: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    summary = run["summary"]
    task = summary.get("task") or run["task"].get("task") or "?"
    facts = [
        ("task", escape(str(task))),
        ("base model", escape(str(summary.get("base_model", "–")))),
        ("steps", fmt(summary.get("steps"))),
        ("time", _duration(summary.get("seconds"))),
    ]
    if _number(summary.get("trainable_parameters")) is not None:
        facts.append(
            (
                "trainable parameters",
                f"{fmt(summary['trainable_parameters'])} of {fmt(summary.get('total_parameters'))}",
            )
        )
    fact_html = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    cards = []
    for row in rows:
        if row["metric"] not in HEADLINE_METRICS or row["after"] is None:
            continue
        change = ""
        if row["delta"] is not None:
            relative = f" ({_percent(row['relative'])})" if row["relative"] is not None else ""
            change = f'<div class="change {row["verdict"]}">{fmt(row["before"])} → {fmt(row["after"])}{relative}</div>'
        label = (
            "general-text perplexity (forgetting)" if row["metric"] == "general.perplexity" else row["metric"]
        )
        label = "held-out " + label if not row["metric"].startswith("general") else label
        cards.append(
            f'<div class="card"><div class="label">{escape(label.replace("_", " "))}</div>'
            f'<div class="value">{fmt(row["after"])}</div>{change}</div>'
        )
    if not cards:
        cards.append(
            '<div class="card"><div class="label">evaluation</div><div class="value">–</div>'
            '<div class="change">no before/after metrics in this run</div></div>'
        )
    problems = "".join(f'<p class="missing">{escape(p)}</p>' for p in run["problems"])
    return _section(
        "summary",
        "Summary",
        f'<dl class="facts">{fact_html}</dl><div class="cards">{"".join(cards)}</div>{problems}',
    )


def _training_curves(run: dict[str, Any]) -> str:
    records = run["metrics"]
    train = [
        r for r in records if _number(r.get("loss")) is not None and not any(k.startswith("eval_") for k in r)
    ]
    evals = [r for r in records if _number(r.get("eval_loss")) is not None]
    if not train and not evals:
        return _section(
            "curves", "Training curves", _missing("No training metrics (metrics.jsonl is empty or absent).")
        )
    if _pyplot() is None:
        return _section(
            "curves",
            "Training curves",
            _missing("Plots need matplotlib: pip install 'tunesmith[report]', then tunesmith report RUN."),
        )
    eval_steps, eval_values = [r["step"] for r in evals], [r["eval_loss"] for r in evals]
    before, after, last_step = run["before"] or {}, run["after"] or {}, train[-1]["step"] if train else 0
    # The before/after evaluations are the same held-out loss at step 0 and at the end.
    if _number(before.get("loss")) is not None and 0 not in eval_steps:
        eval_steps, eval_values = [0, *eval_steps], [before["loss"], *eval_values]
    if _number(after.get("loss")) is not None and last_step and last_step not in eval_steps:
        eval_steps, eval_values = [*eval_steps, last_step], [*eval_values, after["loss"]]
    series = [
        (
            "train loss",
            [r["step"] for r in train],
            [r["loss"] for r in train],
            {"color": TUNED_COLOR, "linewidth": 1.2, "alpha": 0.85},
        )
    ]
    if eval_steps:
        series.append(
            (
                "held-out loss",
                eval_steps,
                eval_values,
                {"color": "#dc2626", "linewidth": 2, "marker": "o", "markersize": 4},
            )
        )
    lr_records = [r for r in train if _number(r.get("lr")) is not None]
    lr = ([r["step"] for r in lr_records], [r["lr"] for r in lr_records]) if lr_records else None
    body = _curves(series, lr, "loss (nats per target token)", "loss")
    accuracy = [
        (k, label)
        for k, label in (("token_accuracy", "train token accuracy"), ("accuracy", "train accuracy"))
        if any(k in r for r in train)
    ]
    accuracy_series = [
        (
            label,
            [r["step"] for r in train if k in r],
            [r[k] for r in train if k in r],
            {"color": TUNED_COLOR, "linewidth": 1.2},
        )
        for k, label in accuracy
    ]
    for key, color in (
        ("eval_token_accuracy", "#dc2626"),
        ("eval_accuracy", "#dc2626"),
        ("eval_macro_f1", "#7c3aed"),
    ):
        points = [r for r in records if _number(r.get(key)) is not None]
        if points:
            accuracy_series.append(
                (
                    key.replace("eval_", "held-out ").replace("_", " "),
                    [r["step"] for r in points],
                    [r[key] for r in points],
                    {"color": color, "linewidth": 2, "marker": "o", "markersize": 4},
                )
            )
    if accuracy_series:
        body += _curves(accuracy_series, None, "accuracy", "accuracy")
    note = (
        "Train loss is the mean over each optimizer step's target tokens; held-out loss is measured "
        "on the evaluation set (step 0 = the base model). The dotted line is the learning rate."
    )
    return _section("curves", "Training curves", body, note)


def _metrics_section(run: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    if run["before"] is None and run["after"] is None:
        return _section(
            "metrics",
            "Before and after",
            _missing(
                "No evaluation in this run (eval.before and eval.after were off, or the run stopped early)."
            ),
        )
    table_rows = []
    for row in rows:
        arrow = {"lower": "lower is better", "higher": "higher is better"}.get(row["direction"], "")
        delta = (
            ""
            if row["delta"] is None
            else f'{fmt(row["delta"])} <span class="muted">{_percent(row["relative"])}</span>'
        )
        verdict = f'<span class="badge {row["verdict"]}">{row["verdict"]}</span>' if row["verdict"] else ""
        table_rows.append(
            [
                f'<span title="{arrow}">{escape(row["metric"])}</span>',
                fmt(row["before"]),
                fmt(row["after"]),
                delta,
                verdict,
            ]
        )
    sides = []
    if run["before"] is None:
        sides.append("the base model was not evaluated (eval.before: false)")
    if run["after"] is None:
        sides.append("the tuned model was not evaluated (eval.after: false, or the run stopped early)")
    note = "Base = the model before finetuning, tuned = after, both on the same held-out data."
    if sides:
        note += " Note: " + "; ".join(sides) + "."
    body = _headline_bars(rows, "headline") + _table(
        ["metric", "base", "tuned", "change", ""], table_rows, "numbers"
    )
    return _section("metrics", "Before and after", body, note)


def _forgetting_section(run: dict[str, Any]) -> str:
    before, after = (run["before"] or {}).get("general"), (run["after"] or {}).get("general")
    if not isinstance(before, dict) and not isinstance(after, dict):
        return ""
    before, after = before or {}, after or {}
    source = after.get("source") or before.get("source") or "general reference text"
    rows = [[key, fmt(before.get(key)), fmt(after.get(key))] for key in ("loss", "perplexity")]
    old, new = _number(before.get("perplexity")), _number(after.get("perplexity"))
    verdict = ""
    if old and new is not None:
        rise = new / old - 1
        word = "rose" if rise > 0 else "fell"
        level = "warn" if rise > 0.05 else "ok"
        verdict = (
            f'<p class="verdict {level}">General-text perplexity {word} by {abs(rise) * 100:.1f}% '
            f"({fmt(old)} → {fmt(new)})."
            + (
                " A large rise means the model lost general ability; "
                "lower the learning rate, train fewer steps, use LoRA, or mix in replay data."
                if rise > 0.2
                else ""
            )
            + "</p>"
        )
    note = (
        f"Perplexity on text unrelated to the task ({escape(Path(str(source)).name)}), the forgetting probe."
    )
    return _section(
        "forgetting", "Forgetting probe", verdict + _table(["", "base", "tuned"], rows, "numbers"), note
    )


def _generations_section(comparison: dict[str, Any]) -> str:
    generations = comparison["generations"]
    if not generations:
        return ""
    rows = []
    for item in generations:
        before = _text(item["before"]) + _score(item.get("rouge_l_before"))
        after = _text(item["after"]) + _score(item.get("rouge_l_after"))
        rows.append([_text(item["prompt"]), _text(item["reference"]), before, after])
    note = (
        "Greedy generations for the same held-out prompts, by the base model and by the tuned model "
        "(ROUGE-L against the reference under each)."
    )
    return _section(
        "generations",
        "Generations side by side",
        _table(["prompt", "reference", "base model", "tuned model"], rows, "texts"),
        note,
    )


def _score(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f'<div class="score">ROUGE-L {number:.2f}</div>'


def _classify_section(run: dict[str, Any]) -> str:
    parts = []
    for side, title in (("before", "base model"), ("after", "tuned model")):
        matrix = (run[side] or {}).get("confusion_matrix")
        if isinstance(matrix, dict) and matrix.get("labels") and matrix.get("matrix"):
            parts.append(f'<div class="matrix"><h3>{title}</h3>{_confusion_matrix(matrix)}</div>')
    per_class = _per_class_table(run)
    if not parts and not per_class:
        return ""
    body = f'<div class="matrices">{"".join(parts)}</div>' + per_class
    note = "Rows are the true labels, columns the predicted ones; the shade is the share of the row."
    return _section("classes", "Classes", body, note)


def _confusion_matrix(matrix: dict[str, Any]) -> str:
    labels = [str(label) for label in matrix["labels"]]
    header = '<th class="corner">true \\ predicted</th>' + "".join(
        f"<th>{escape(label)}</th>" for label in labels
    )
    body = []
    for label, counts in zip(labels, matrix["matrix"], strict=False):
        total = sum(c for c in counts if _number(c) is not None) or 1
        cells = []
        for column, count in enumerate(counts):
            share = (_number(count) or 0) / total
            diagonal = column < len(labels) and labels[column] == label
            color = f"rgba(37,99,235,{share:.2f})" if diagonal else f"rgba(220,38,38,{share:.2f})"
            ink = "#fff" if share > 0.55 else "#111827"
            cells.append(
                f'<td style="background:{color};color:{ink}" title="{share * 100:.0f}% of {escape(label)}">'
                f"{fmt(count)}</td>"
            )
        body.append(f"<tr><th>{escape(label)}</th>{''.join(cells)}</tr>")
    return f'<table class="confusion"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _per_class_table(run: dict[str, Any]) -> str:
    before, after = (run["before"] or {}).get("per_class"), (run["after"] or {}).get("per_class")
    if not isinstance(before, dict) and not isinstance(after, dict):
        return ""
    before, after = before or {}, after or {}
    rows = []
    for label in list(after) + [k for k in before if k not in after]:
        old, new = before.get(label) or {}, after.get(label) or {}
        row = [escape(str(label))]
        for key in ("precision", "recall", "f1"):
            row.append(f"{fmt(old.get(key))} → <b>{fmt(new.get(key))}</b>")
        row.append(fmt(new.get("support", old.get("support"))))
        rows.append(row)
    return "<h3>Per class (base → tuned)</h3>" + _table(
        ["label", "precision", "recall", "F1", "support"], rows, "numbers"
    )


def _examples_section(comparison: dict[str, Any]) -> str:
    examples = comparison["examples"]
    if not examples["kind"]:
        return ""
    parts = []
    for key, title in (("fixed", "Fixed by the tuning"), ("broken", "Broken by the tuning")):
        items = examples[key]
        count = examples[f"num_{key}"]
        heading = f"<h3>{title}: {count} of {examples['num_compared']}</h3>"
        if not items:
            parts.append(heading + '<p class="muted">none</p>')
            continue
        if examples["kind"] == "correct":
            rows = [
                [
                    _text(i.get("text")),
                    escape(str(i.get("label"))),
                    escape(str(i.get("predicted_before"))),
                    escape(str(i.get("predicted_after"))),
                ]
                for i in items
            ]
            parts.append(
                heading + _table(["text", "label", "base predicted", "tuned predicted"], rows, "texts")
            )
        else:
            rows = [
                [
                    _text(i.get("prompt") or i.get("text") or i.get("source")),
                    _text(i.get("reference")),
                    fmt(i.get("loss_before")),
                    fmt(i.get("loss_after")),
                    fmt(i.get("change")),
                ]
                for i in items
            ]
            parts.append(
                heading
                + _table(["prompt", "reference", "base loss", "tuned loss", "change"], rows, "texts examples")
            )
    if examples["kind"] == "correct":
        note = "Held-out examples the base model got wrong and the tuned model right (fixed), and the reverse (broken)."
    else:
        note = (
            "Held-out examples whose own loss fell (fixed) or rose (broken) by more than 5% with the tuning, "
            "largest changes first."
        )
    return _section("examples", "Fixed and broken examples", "".join(parts), note)


def _data_section(run: dict[str, Any]) -> str:
    check = run["data_check"]
    parts = []
    if not isinstance(check, dict):
        parts.append(
            _missing("The data doctor's findings are not in this run (eval/data_check.json absent).")
        )
    elif check.get("skipped"):
        reason = check.get("reason") or "data.check was off"
        parts.append(_missing(f"The data doctor did not run ({escape(str(reason))})."))
    else:
        verdict = str(check.get("verdict", "?"))
        lowered = verdict.lower()  # the doctor says: ready | ready with warnings | not ready
        level = "bad" if "not" in lowered or "error" in lowered else ("warn" if "warn" in lowered else "ok")
        parts.append(f'<p class="verdict {level}">Verdict: <b>{escape(verdict)}</b></p>')
        findings = check.get("findings") or []
        if findings:
            rows = []
            for finding in findings:
                if not isinstance(finding, dict):
                    continue
                severity = str(finding.get("severity", ""))
                examples = finding.get("examples") or []
                shown = "".join(f"<li>{escape(_short(e))}</li>" for e in examples[:3])
                detail = escape(str(finding.get("detail", "")))
                rows.append(
                    [
                        f'<span class="badge {escape(severity)}">{escape(severity)}</span>',
                        f"<b>{escape(str(finding.get('title', finding.get('id', ''))))}</b>"
                        f'<div class="muted">{detail}</div>' + (f"<ul>{shown}</ul>" if shown else ""),
                        fmt(finding.get("count")),
                    ]
                )
            parts.append(_table(["severity", "finding", "count"], rows, "findings"))
        else:
            parts.append('<p class="muted">No findings.</p>')
        stats = check.get("stats")
        if isinstance(stats, dict) and stats:
            parts.append("<h3>Statistics</h3>" + _key_values(stats))
    data_stats = run["summary"].get("data")
    if isinstance(data_stats, dict):
        for split in ("train", "eval"):
            if isinstance(data_stats.get(split), dict):
                parts.append(f"<h3>Tokenized {split} data</h3>" + _key_values(data_stats[split]))
        if data_stats.get("chat_template"):
            parts.append(f"<p>Chat template: <code>{escape(str(data_stats['chat_template']))}</code></p>")
    return _section("data", "Data", "".join(parts))


def _short(value: Any, limit: int = 240) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + " …"


def _key_values(values: dict[str, Any]) -> str:
    rows = [[escape(str(k)), fmt(v) if _number(v) is not None else _text(v)] for k, v in values.items()]
    return _table(["", ""], rows, "keyvalues")


def _speed_section(run: dict[str, Any]) -> str:
    speeds = [r for r in run["metrics"] if _number(r.get("tokens_per_second")) is not None]
    summary = run["summary"]
    values: dict[str, str] = {}
    if speeds:
        ordered = sorted(r["tokens_per_second"] for r in speeds)
        values["tokens per second (median)"] = fmt(ordered[len(ordered) // 2])
        values["tokens per second (best)"] = fmt(ordered[-1])
    if _number(summary.get("seconds")) is not None:
        values["wall time (incl. evaluation)"] = _duration(summary["seconds"])
    if _number(summary.get("train_seconds")) is not None:
        values["training time"] = _duration(summary["train_seconds"])
    values["peak process memory (RSS)"] = _bytes(summary.get("peak_rss_bytes"))
    if _number(summary.get("cuda_max_memory_allocated_bytes")) is not None:
        values["peak GPU memory allocated"] = _bytes(summary["cuda_max_memory_allocated_bytes"])
    rows = [[escape(k), v] for k, v in values.items()]
    body = _table(["", ""], rows, "keyvalues")
    if len(speeds) > 1 and _pyplot() is not None:
        body += _curves(
            [
                (
                    "tokens/s",
                    [r["step"] for r in speeds],
                    [r["tokens_per_second"] for r in speeds],
                    {"color": "#0891b2", "linewidth": 1.4},
                )
            ],
            None,
            "tokens per second",
            "throughput",
        )
    note = "Tokens per second count every token of the packed rows (padding included) through forward and backward."
    return _section("speed", "Throughput and memory", body, note)


def _config_section(run: dict[str, Any]) -> str:
    config = run["config"]
    body = f"<pre>{escape(config)}</pre>" if config else _missing("config.yaml is absent.")
    environment = run["environment"]
    env = (
        _key_values(environment) if isinstance(environment, dict) else _missing("environment.json is absent.")
    )
    return _section(
        "config",
        "Configuration and environment",
        f'<div class="columns"><div><h3>Resolved config</h3>{body}</div>'
        f"<div><h3>Environment</h3>{env}</div></div>",
    )


# --------------------------------------------------------------------------------------------
# The page


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
        _generations_section(comparison),
        _classify_section(run) if task == "classify" or "confusion_matrix" in after else "",
        _examples_section(comparison),
        _data_section(run),
        _speed_section(run),
        _config_section(run),
    ]
    sections = [s for s in sections if s]
    titles = {
        "summary": "Summary",
        "curves": "Curves",
        "metrics": "Before/after",
        "forgetting": "Forgetting",
        "generations": "Generations",
        "classes": "Classes",
        "examples": "Fixed/broken",
        "data": "Data",
        "speed": "Speed",
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
        # No favicon request: the page must not touch the network or the disk around it.
        '<link rel="icon" href="data:,">'
        f"<title>tunesmith run {escape(run['name'])}</title><style>{STYLE}</style></head><body>"
        f'<header><h1>tunesmith run: {escape(run["name"])}</h1><div class="sub">{subtitle}</div></header>'
        f"<nav>{links}</nav><main>{''.join(sections)}</main>"
        "<footer>Built by tunesmith from the run directory; rebuild with <code>tunesmith report RUN</code>.</footer>"
        "</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Build run_dir/report.html from the run's files; returns its path."""
    run_dir = Path(run_dir)
    page = render(load_run(run_dir))
    path = run_dir / REPORT_FILE
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(page, encoding="utf-8")
    os.replace(temp, path)
    return path
