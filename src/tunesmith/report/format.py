"""Formatting for the report: numbers, HTML tables and sections, and matplotlib plots as inline SVG."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from tunesmith.evaluate.compare import format_number

MAX_TEXT_CHARS = 1200  # a prompt or generation longer than this is cut in the tables
BASE_COLOR, TUNED_COLOR, LR_COLOR = "#94a3b8", "#2563eb", "#d97706"

# --------------------------------------------------------------------------------------------
# Small formatting helpers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt(value: Any) -> str:
    """A number as people read it (evaluate.compare.format_number), HTML-escaped."""
    return escape(format_number(value))


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


def _headline_bars(rows: list[dict[str, Any]], name: str, keys: Sequence[str]) -> str:
    """Small multiples: one pair of bars (base, tuned) per metric of `keys` (the task's declared ones),
    each on its own scale."""
    plt = _pyplot()
    shown = [r for r in rows if r["metric"] in keys and r["before"] is not None and r["after"] is not None]
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
