"""The learning curve's own page: curve.png (matplotlib) and curve.html next to curve.json."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.report.format import _pyplot, _section, _table, fmt
from tunesmith.train.rundir import atomic_write

if TYPE_CHECKING:
    from tunesmith.select.powerlaw import PowerLawFit


def plot_curve(result: dict[str, Any], fit: PowerLawFit, path: Path) -> Path | None:
    """The measured points, the fitted curve with its band, out to 4x the data (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    all_rows = float(result["rows"])
    fitted = [p for p in result["points"] if p["fraction"] < 1.0]
    smallest = min(p["rows"] for p in fitted)
    grid = np.geomspace(smallest * 0.8, all_rows * 4.2, 60)
    bands = [fit.band(float(n)) for n in grid]
    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    axes.fill_between(
        grid, [b[0] for b in bands], [b[1] for b in bands], color="#93c5fd", alpha=0.45, label="90% band"
    )
    axes.plot(
        grid, [fit.value(float(n)) for n in grid], color="#1d4ed8", linewidth=1.6, label="power-law fit"
    )
    seeds = [(p["rows"], value) for p in fitted if len(p.get("runs", [])) > 1 for value in p["runs"]]
    if seeds:
        axes.scatter(
            [n for n, _ in seeds], [v for _, v in seeds], color="#6b7280", s=12, zorder=3, label="each seed"
        )
    axes.scatter(
        [p["rows"] for p in fitted],
        [p["value"] for p in fitted],
        color="#111827",
        zorder=3,
        label="measured (mean)" if seeds else "measured",
    )
    full = [p for p in result["points"] if p["fraction"] == 1.0]
    if full:
        axes.scatter(
            [full[0]["rows"]],
            [full[0]["value"]],
            color="#dc2626",
            marker="*",
            s=90,
            zorder=4,
            label="all data (check)",
        )
    for factor in (1, 2, 4):
        axes.axvline(factor * all_rows, color="#9ca3af", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("training rows")
    axes.set_ylabel(f"held-out {result['metric']}")
    axes.set_title("learning curve: 1x, 2x, 4x the data dotted")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def curve_page(result: dict[str, Any], image: Path | None) -> str:
    metric = escape(str(result["metric"]))
    rows = [
        [
            fmt(p["fraction"]),
            fmt(p["rows"]),
            fmt(p["steps"]),
            fmt(p["value"]),
            escape(", ".join(f"{v:.4f}" for v in p.get("runs", [p["value"]]))),
            fmt(round(p["seconds"], 1)),
        ]
        for p in result["points"]
    ]
    measured = _table(["fraction", "rows", "steps", f"{metric} (mean)", "each seed", "seconds"], rows)
    predicted = _table(
        ["data", "rows", f"predicted {metric}", "90% band"],
        [
            [escape(k), fmt(v["n"]), fmt(v["predicted"]), f"{fmt(v['low'])} – {fmt(v['high'])}"]
            for k, v in result["predictions"].items()
        ],
    )
    check = ""
    if "verification" in result:
        v = result["verification"]
        outcome = (
            ("within" if v["within_band"] else "outside") + " the band"
            if v.get("predictable", True)
            else "no prediction to check (the points are at chance)"
        )
        check = (
            f"<p><b>check:</b> the run on all the data measured {fmt(v['measured'])}; predicted "
            f"{fmt(v['predicted'])} ({fmt(v['low'])} – {fmt(v['high'])}): {outcome}</p>"
        )
    plot = ""
    if image is not None and image.is_file():
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        plot = f'<img alt="learning curve" src="data:image/png;base64,{encoded}">'
    body = (
        f"<p><b>{escape(result['verdict'])}</b></p>{check}{plot}<h3>Measured</h3>{measured}"
        f'<h3>Predicted</h3>{predicted}<p class="note">{escape(result["cost"]["line"])}</p>'
    )
    section = _section(
        "curve",
        "Is the data enough? (learning curve)",
        body,
        f"{metric}(n) = a + b·n^-c fitted to short runs on nested subsets; band from a parametric bootstrap "
        f"(point errors: {escape(result['fit']['error_source'])}).",
    )
    return f'<!doctype html><html><head><meta charset="utf-8"><title>tunesmith data curve</title></head><body>{section}</body></html>'


def write_curve_report(out: Path, result: dict[str, Any], fit: PowerLawFit) -> dict[str, Path]:
    """curve.png (when matplotlib is installed) and curve.html in `out`."""
    files: dict[str, Path] = {}
    image = plot_curve(result, fit, out / "curve.png")
    if image is not None:
        files["png"] = image
    files["html"] = atomic_write(out / "curve.html", curve_page(result, image))
    return files
