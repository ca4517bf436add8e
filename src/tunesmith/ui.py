"""Presentation for the command line: what the library returns, drawn in a terminal (rich lives here).

`ConsoleProgress` implements `tunesmith.progress.Progress` (bars and message lines) for the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.doctor import CheckReport
from tunesmith.progress import Level

SEVERITY_COLORS = {"error": "red", "warning": "yellow", "info": "dim"}


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def finding_lines(report: CheckReport) -> list[str]:
    """One `path:line: severity: title` line per place a finding names (grep-able, clickable in editors).

    A finding that names no place gets one `data check: severity: title` line.
    """
    lines = []
    for item in report.findings:
        places = item.examples or ("data check",)
        lines += [f"{place}: {item.severity}: {item.title}" for place in places]
        if item.examples and item.count > len(item.examples):
            lines[-1] += f" (and {item.count - len(item.examples):,} more)"
    return lines


def _file_of(place: str) -> str:
    path, _, line = place.rpartition(":")
    return path if path and line.isdigit() else place


def _short_paths(text: str, paths: set[str]) -> str:
    """File names for the paths the lines above spelled out: a long path would fill the table's cells."""
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, Path(path).name)
    return text


def print_check(console: Any, report: CheckReport) -> None:
    """`tunesmith data check` in a terminal: the finding lines, then the summary table, then the verdict."""
    from rich.markup import escape
    from rich.table import Table

    for line in finding_lines(report):
        # Never wrapped: a line cut in two is neither grep-able nor clickable.
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    stats = report.stats
    table = Table(
        title=f"data check ({report.task}): {stats.get('num_train', 0)} train, {stats.get('num_eval', 0)} eval records",
        show_lines=True,
        expand=True,
    )
    table.add_column("severity", no_wrap=True)
    table.add_column("finding", ratio=2, overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("detail", ratio=5, overflow="fold")
    paths = {_file_of(place) for item in report.findings for place in item.examples}
    for item in report.findings:
        color = SEVERITY_COLORS.get(item.severity, "")
        detail = escape(_short_paths(item.detail, paths))
        table.add_row(f"[{color}]{item.severity}[/{color}]", escape(item.title), f"{item.count:,}", detail)
    console.print(table)
    color = {"ready": "green", "ready with warnings": "yellow"}.get(report.verdict, "red")
    console.print(f"verdict: [bold {color}]{report.verdict}[/bold {color}]")


def format_message(text: str, level: Level = "info") -> str:
    """Rich markup for one message: a warning's label ("warning:", "data warning:") in yellow."""
    from rich.markup import escape

    label, sep, rest = text.partition(": ")
    if level == "warning":
        if sep and "warning" in label:
            return f"[yellow]{escape(label)}[/yellow]: {escape(rest)}"
        return f"[yellow]warning[/yellow]: {escape(text)}"
    if sep and label.isalpha():
        return f"[bold]{label}[/bold]: {escape(rest)}"
    return escape(text)


class ConsoleProgress:
    """Messages as console lines; a bar (with loss, tokens/s and ETA while a run trains).

    `show_bar=False` (config `logging.progress: false`) keeps the lines and drops the bar.
    """

    def __init__(self, out: Any, show_bar: bool = True):
        self.out, self.show_bar = out, show_bar
        self.bar: Any = None
        self.task_id: Any = None

    def start(self, total: int, done: int = 0, title: str = "train") -> None:
        if not self.show_bar or self.out.quiet:
            return
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns: list[Any] = [TextColumn(f"[bold]{escape(title)}"), BarColumn(), MofNCompleteColumn()]
        if title == "train":
            columns += [TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s")]
        columns.append(TimeRemainingColumn())
        self.bar = Progress(*columns, console=self.out, transient=False)
        self.bar.start()
        self.task_id = self.bar.add_task(title, total=total, completed=done, loss="-", speed="-")

    def step(self, step: int, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        fields = {}
        if isinstance(record.get("loss"), (int, float)):
            fields["loss"] = f"{record['loss']:.4f}"
        if isinstance(record.get("tokens_per_second"), (int, float)):
            fields["speed"] = f"{record['tokens_per_second']:,.0f}"
        self.bar.update(self.task_id, completed=step, **fields)

    def message(self, text: str, level: Level = "info") -> None:
        self.out.print(format_message(text, level), soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_comparison(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    from tunesmith.evaluate.compare import format_number as fmt

    comparison = result["comparison"]
    table = Table(title=f"{result['task']} metrics on {result['data']}")
    table.add_column("metric")
    table.add_column(f"baseline ({result['baseline_model'] or 'none'})", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("change", justify="right")
    for row in comparison["metrics"]:
        change = "" if row["delta"] is None else fmt(row["delta"])
        style = {"better": "green", "worse": "red"}.get(row["verdict"], "")
        table.add_row(
            row["metric"],
            fmt(row["before"]),
            fmt(row["after"]),
            f"[{style}]{change}[/{style}]" if style else change,
        )
    console.print(table)
    if comparison["generations"]:
        generations = Table(title="generations", show_lines=True)
        for column in ("prompt", "reference", "baseline", "tuned"):
            generations.add_column(column, overflow="fold")
        for item in comparison["generations"]:
            generations.add_row(*(str(item.get(k) or "") for k in ("prompt", "reference", "before", "after")))
        console.print(generations)
    examples = comparison["examples"]
    if examples["kind"]:
        console.print(
            f"{examples['num_compared']} examples compared: {examples['num_fixed']} fixed, "
            f"{examples['num_broken']} broken by the tuning"
        )
    if result.get("out_dir"):
        console.print(f"results: {result['out_dir']}")


def print_benchmarks(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"benchmarks: {result['tuned_model']} vs {result['baseline_model'] or 'no baseline'}")
    for column in ("task", "metric", "base", "tuned", "change", "verdict"):
        table.add_column(column, justify="left" if column in ("task", "metric", "verdict") else "right")
    for row in result["rows"]:
        style = {"better": "green", "worse": "red"}.get(row["verdict"], "")
        table.add_row(
            row["task"],
            row["metric"],
            _with_stderr(row["base"], row["base_stderr"]),
            _with_stderr(row["tuned"], row["tuned_stderr"]),
            _with_stderr(row["change"], row["change_stderr"]),
            f"[{style}]{row['verdict']}[/{style}]" if style else row["verdict"],
        )
    if not result["rows"]:
        for task, values in result["tuned"].get("tasks", {}).items():
            for key, metric in values["metrics"].items():
                table.add_row(task, key, "", _with_stderr(metric["value"], metric["stderr"]), "", "")
    console.print(table)
    if result.get("out_dir"):
        console.print(f"results: {result['out_dir']}")


def _with_stderr(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def print_selection(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"candidates for {result['task']} on {result['data']} ({result['memory_budget']}, "
        f"{result['device']})",
        show_lines=True,
    )
    fit = (result.get("fit_ranking") or [{"key": "loss_per_char", "label": "fit (nats/char)"}])[0]
    for column in ("rank", "model", fit["label"], "tokens/char", "method", "train time"):
        table.add_column(column, overflow="fold")
    for c in result["ranked"]:
        table.add_row(
            str(c["rank"]),
            c["name"],
            f"{c['fit'].get(fit['key'], float('nan')):.3f}",
            f"{c['fit'].get('tokens_per_char', float('nan')):.2f}",
            (c["method"] or "does not fit") + (" + gc" if c["gradient_checkpointing"] else ""),
            f"{c['estimated_seconds'] / 60:.1f} min",
        )
    console.print(table)
    for c in result["ranked"]:
        console.print(f"[bold]{c['rank']}. {c['name']}[/bold]: " + "; ".join(c["reasons"]), soft_wrap=True)
    for item in result["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {item['name']}: {item['reason']}", soft_wrap=True)
    for note in result["notes"]:
        console.print(f"[dim]{note}[/dim]", soft_wrap=True)
    if result.get("no_fit"):
        console.print(f"[bold red]{result['no_fit']}[/bold red]", soft_wrap=True)
    recommendation = result.get("recommendation")
    if recommendation:
        console.print(
            f"[bold green]recommended[/bold green]: {recommendation['model']} with {recommendation['method']}"
        )
        for line in recommendation["hyperparameter_reasoning"]:
            console.print(f"  - {line}", soft_wrap=True)
        if result.get("out_dir"):
            console.print(
                f"config: {result['out_dir']}/config.yaml (train with: tunesmith train "
                f"{result['out_dir']}/config.yaml)"
            )
        else:
            console.print("[bold]config.yaml[/bold]")
            console.print(recommendation["config_yaml"], markup=False)


def print_curve(console: Any, result: dict[str, Any]) -> None:
    """`tunesmith data curve`: the measured points, the predictions with their bands, the verdict."""
    from rich.table import Table

    metric = result["metric"]
    table = Table(title=f"learning curve ({metric}, {result['rows']:,} training rows)")
    for column in ("data", "rows", metric, "band (90%)"):
        table.add_column(column)
    for p in result["points"]:
        runs = p.get("runs", [p["value"]])
        seeds = f" (seeds: {', '.join(f'{v:.4f}' for v in runs)})" if len(runs) > 1 else ""
        table.add_row(f"{p['fraction']:g} (measured)", f"{p['rows']:,}", f"{p['value']:.4f}{seeds}", "")
    for name, v in result["predictions"].items():
        table.add_row(
            f"{name} (predicted)",
            f"{v['n']:,.0f}",
            f"{v['predicted']:.4f}",
            f"{v['low']:.4f} – {v['high']:.4f}",
        )
    console.print(table)
    if "verification" in result:
        v = result["verification"]
        if not v.get("predictable", True):
            inside = "[yellow]no prediction to check[/yellow] (the points are at chance)"
        else:
            inside = (
                "[green]within[/green]" if v["within_band"] else "[red]outside[/red]"
            ) + " the predicted band"
        console.print(f"check: all the data measured {v['measured']:.4f}, {inside}")
    console.print(f"[bold]{result['verdict']}[/bold]", soft_wrap=True)
    console.print(f"[dim]{result['cost']['line']}; files in {result['out_dir']}[/dim]", soft_wrap=True)


def print_prediction(console: Any, run_dir: Any) -> None:
    """After `tunesmith train`: what was predicted next to what was used (summary.json's prediction)."""
    import json
    from pathlib import Path

    from tunesmith.report.sections import prediction_lines

    summary_file = Path(run_dir) / "summary.json"
    if not summary_file.is_file():
        return
    prediction = json.loads(summary_file.read_text(encoding="utf-8")).get("prediction")
    if not isinstance(prediction, dict):
        return
    shown = [
        f"{name}: predicted {guess}, used {used}" for name, guess, used, _ in prediction_lines(prediction)
    ]
    if shown:
        console.print(
            f"[dim]prediction ({prediction.get('source')}): {'; '.join(shown)}[/dim]", soft_wrap=True
        )


def print_preview(console: Any, samples: list[dict[str, Any]]) -> None:
    """`data preview`: each sample with its trained tokens highlighted and the rest dimmed."""
    from rich.text import Text

    for sample in samples:
        label = f"  label={sample['label']}" if sample["label"] is not None else ""
        console.rule(f"{sample['source']}{label}")
        text = Text()
        for piece, trained in sample["pieces"]:
            text.append(piece, style="bold green" if trained else "dim")
        console.print(text)
    console.print("[bold green]green[/bold green] = trained (loss), [dim]dim[/dim] = context only")
