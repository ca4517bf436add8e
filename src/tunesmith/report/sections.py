"""The sections of report.html, each built from what the run's files hold (absent files: a note)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from tunesmith.report.findings import render_findings
from tunesmith.report.format import (
    TUNED_COLOR,
    _bytes,
    _curves,
    _duration,
    _headline_bars,
    _missing,
    _number,
    _percent,
    _pyplot,
    _section,
    _table,
    _text,
    fmt,
)
from tunesmith.tasks import TaskInfo, task_info, task_names

# What the loop itself logs each step (train/loop.py); every other number in a step record is the loss's.
LOOP_KEYS = ("step", "loss", "lr", "grad_norm", "num_targets", "tokens_per_second")
LOSS_SCALAR_COLORS = ("#2563eb", "#dc2626", "#15803d", "#7c3aed", "#0891b2", "#d97706")


def _task(run: dict[str, Any]) -> TaskInfo | None:
    """The run's task's declarations (tasks/__init__.py); None for a task this version does not know."""
    name = run["summary"].get("task") or run["task"].get("task")
    return task_info(name) if name in task_names() else None


def _shown_metrics(run: dict[str, Any]) -> list[str]:
    """The metric keys the cards and bars show: the task's declared ones (any task's when unknown)."""
    info = _task(run)
    infos = [info] if info is not None else [task_info(n) for n in task_names()]
    return list(dict.fromkeys(m.key for i in infos for m in i.metrics))


def _metric_label(run: dict[str, Any], key: str) -> str:
    info = _task(run)
    metric = info.metric(key) if info is not None else None
    return metric.label if metric is not None else key.replace("_", " ")


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
    shown = _shown_metrics(run)
    for row in sorted(rows, key=lambda r: shown.index(r["metric"]) if r["metric"] in shown else 0):
        if row["metric"] not in shown or row["after"] is None:
            continue
        change = ""
        if row["delta"] is not None:
            relative = f" ({_percent(row['relative'])})" if row["relative"] is not None else ""
            change = f'<div class="change {row["verdict"]}">{fmt(row["before"])} → {fmt(row["after"])}{relative}</div>'
        label = _metric_label(run, row["metric"])
        label = "general-text perplexity (forgetting)" if row["metric"] == "general.perplexity" else label
        label = "held-out " + label if not row["metric"].startswith("general") else label
        cards.append(
            f'<div class="card"><div class="label">{escape(label)}</div>'
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
    info = _task(run)
    unit = info.step_unit if info is not None else "token"
    body = _curves(series, lr, f"loss (nats per target {unit})", "loss")
    body += _accuracy_curves(records, train, unit)
    margins = [r for r in records if _number(r.get("eval_margin")) is not None]
    if margins:
        margin_series = [
            (
                "held-out margin",
                [r["step"] for r in margins],
                [r["eval_margin"] for r in margins],
                {"color": "#dc2626", "linewidth": 2, "marker": "o", "markersize": 4},
            )
        ]
        body += _curves(margin_series, None, "margin (chosen - rejected)", "margin")
    body += _loss_scalar_curves(train)
    note = (
        f"Train loss is the mean over each optimizer step's target {unit}s; train {unit} accuracy is the share "
        f"of them the model got right. Held-out figures are measured on the evaluation set (step 0 = the "
        "base model). The dotted line is the learning rate."
    )
    return _section("curves", "Training curves", body, note)


def _accuracy_curves(records: list[dict[str, Any]], train: list[dict[str, Any]], unit: str) -> str:
    """The step's accuracy, labelled by its unit (the loop logs f"{unit}_accuracy"), and held-out accuracies."""
    key = f"{unit}_accuracy"
    series = [
        (
            f"train {unit} accuracy",
            [r["step"] for r in train if k in r],
            [r[k] for r in train if k in r],
            {"color": TUNED_COLOR, "linewidth": 1.2},
        )
        # runs logged before the unit named the key called every step's accuracy token_accuracy
        for k in (key if any(key in r for r in train) else "token_accuracy",)
        if any(k in r for r in train)
    ]
    for name, color in (
        ("eval_token_accuracy", "#dc2626"),
        ("eval_accuracy", "#dc2626"),
        ("eval_macro_f1", "#7c3aed"),
    ):
        points = [r for r in records if _number(r.get(name)) is not None]
        if points:
            series.append(
                (
                    name.replace("eval_", "held-out ").replace("_", " "),
                    [r["step"] for r in points],
                    [r[name] for r in points],
                    {"color": color, "linewidth": 2, "marker": "o", "markersize": 4},
                )
            )
    return _curves(series, None, "accuracy", "accuracy") if series else ""


def _loss_scalar_curves(train: list[dict[str, Any]]) -> str:
    """Every other number the loss logged each step (DPO: the chosen and rejected rewards, their margin)."""
    keys = [
        k
        for k in dict.fromkeys(k for r in train for k in r)
        if k not in LOOP_KEYS
        and not k.endswith("_accuracy")
        and any(_number(r.get(k)) is not None for r in train)
    ]
    if not keys:
        return ""
    series = [
        (
            key.replace("_", " "),
            [r["step"] for r in train if _number(r.get(key)) is not None],
            [r[key] for r in train if _number(r.get(key)) is not None],
            {"color": LOSS_SCALAR_COLORS[i % len(LOSS_SCALAR_COLORS)], "linewidth": 1.2},
        )
        for i, key in enumerate(keys)
    ]
    return _curves(series, None, "per step, as the loss reports it", "loss-scalars")


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
    body = _headline_bars(rows, "headline", _shown_metrics(run)) + _table(
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
    if any("rejected" in item for item in generations):
        return _pair_generations_section(generations)
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


def _pair_generations_section(generations: list[dict[str, Any]]) -> str:
    rows = [
        [
            _text(item["prompt"]),
            _text(item.get("reference")),
            _text(item.get("rejected")),
            _text(item["before"]),
            _text(item["after"]),
        ]
        for item in generations
    ]
    note = (
        "Held-out pairs: the preferred (chosen) and the worse (rejected) reply, and greedy generations for "
        "the same prompt by the base model and by the tuned model."
    )
    return _section(
        "generations",
        "Generations side by side",
        _table(["prompt", "chosen", "rejected", "base model", "tuned model"], rows, "texts"),
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
        parts.append(render_findings(check))
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
        values["training time (the steps)"] = _duration(summary["train_seconds"])
    if _number(summary.get("eval_seconds")):
        values["evaluation during training"] = _duration(summary["eval_seconds"])
    if _number(summary.get("checkpoint_seconds")):
        values["checkpoints during training"] = _duration(summary["checkpoint_seconds"])
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


PREDICTED_FIGURES = (
    ("tokens_per_second", "tokens per second", fmt),
    ("peak_memory_bytes", "peak memory", _bytes),
    ("wall_seconds", "training time", _duration),
)


def prediction_lines(prediction: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, predicted, used, measured/predicted) per figure that has a prediction or a measurement."""
    lines = []
    for key, name, show in PREDICTED_FIGURES:
        value = prediction.get(key)
        figure: dict[str, Any] = value if isinstance(value, dict) else {}
        guess, actual, ratio = figure.get("predicted"), figure.get("measured"), figure.get("ratio")
        if guess is None and actual is None:
            continue
        lines.append(
            (
                name,
                show(guess) if guess is not None else "not predicted",
                show(actual) if actual is not None else "–",
                f"{_number(ratio):.2f}x" if _number(ratio) is not None else "–",
            )
        )
    return lines


def _prediction_section(run: dict[str, Any]) -> str:
    prediction = run["summary"].get("prediction")
    if not isinstance(prediction, dict):
        return ""
    lines = prediction_lines(prediction)
    if not lines:
        return ""
    rows = [[escape(name), f"predicted {guess}, used {used}", ratio] for name, guess, used, ratio in lines]
    body = _table(["", "predicted vs used", "used / predicted"], rows, "keyvalues")
    notes = [escape(str(n)) for n in prediction.get("notes") or []]
    if notes:
        body += "<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"
    source = {
        "select": "what <code>tunesmith select</code> predicted for this config",
        "preflight": "a steady-state probe before training (train.predict)",
        "estimate": "the memory estimate (models/memory.py); set train.predict: true to predict speed too",
    }.get(str(prediction.get("source")), escape(str(prediction.get("source"))))
    note = f"Predicted from {source}. Training time is the loop's, without evaluation."
    return _section("prediction", "Predicted vs used", body, note)


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
