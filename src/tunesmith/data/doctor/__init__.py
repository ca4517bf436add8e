"""The data doctor: is this data fit to train on?

One streaming pass per file (`scan.py`) gathers per-record facts in arrays, so 1M records fit in
a few hundred MB; the checks (`findings.py`, `content.py`) turn them into findings; `fix.py`
writes a cleaned copy. Nothing here prints: the CLI and the run report show the `CheckReport`.

    result = check_data("train.jsonl", "eval.jsonl", options=CheckOptions(records=Conversation), tokenizer=tok)
    result.report  # CheckReport: verdict, task, findings (severity, title, count, examples, detail), stats

`run_check` is `tunesmith data check`; `preflight` runs before every training run. Preference
pairs (the "preference" record kind) have their own checks, in `pairs.py`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.data.doctor.content import representativeness_findings, sensitive_findings
from tunesmith.data.doctor.findings import (
    CheckReport,
    CheckResult,
    Finding,
    duplicate_findings,
    format_findings,
    label_findings,
    length_findings,
    make_report,
    size_findings,
)
from tunesmith.data.doctor.fix import write_fixed
from tunesmith.data.doctor.scan import CheckOptions, SplitScan, TokenCounter, read_target_inputs, scan_source
from tunesmith.data.formats import (
    RECORD_KINDS,
    Conversation,
    LabeledText,
    PreferencePair,
    PromptRecord,
    TextRecord,
)
from tunesmith.data.load import ROW_SUFFIXES, TEXT_SUFFIXES, ErrorPolicy, expand_paths, is_sources, iter_rows
from tunesmith.errors import UserError
from tunesmith.outputs import Claim, claim_output

if TYPE_CHECKING:
    from tunesmith.config import DataConfig

__all__ = [
    "CheckOptions",
    "CheckReport",
    "CheckResult",
    "Finding",
    "check_data",
    "detect_kind",
    "preflight",
    "options_for",
    "run_check",
    "write_fixed",
]

RECORD_TYPES: dict[str, type] = {kind: record for record, kind in RECORD_KINDS.items()}
PAIRS = RECORD_KINDS[PreferencePair]  # checked by pairs.py, not by the scan
PROMPTS = RECORD_KINDS[PromptRecord]  # checked by prompts.py, not by the scan
PAIR_FIELDS = ({"chosen", "rejected"}, {"preferred_output"})  # any of these field sets: preference pairs


def options_for(kind: str, task: str, **settings: Any) -> CheckOptions:
    """Options for data that becomes `kind` records (formats.RECORD_KINDS: conversation, text, labeled)."""
    if kind not in RECORD_TYPES:
        raise UserError(f"data kind {kind!r}: use one of {', '.join(RECORD_TYPES)}")
    return CheckOptions(records=RECORD_TYPES[kind], task=task, **settings)


def check_data(
    train: Any,
    eval: Any = None,
    target: str | None = None,
    options: CheckOptions | None = None,
    tokenizer: Any = None,
    held_out: set[str] | None = None,
    prepared: Any = None,
    chat_template: str | None = None,
) -> CheckResult:
    """Run every check. `held_out`: sources of train rows the run holds out as eval (no eval file).

    Token lengths come from `tokenizer` (estimated per message), or, at training time, exactly
    from `prepared` (the tokenized examples) when no tokenizer is given.
    """
    options = options or CheckOptions()
    compare = eval is not None or bool(held_out) or target is not None
    train_scan = SplitScan("train", compare, options.seed, options.max_reference_inputs)
    eval_scan = SplitScan("eval", compare, options.seed + 1, options.max_coverage_inputs)
    counter = TokenCounter(tokenizer, options.records, chat_template) if tokenizer is not None else None
    held_out = held_out or set()
    route = lambda s: eval_scan if str(s) in held_out else train_scan  # noqa: E731
    # Several sources (data.train's mix): each read with its own format and fields, checked as one whole.
    sources = train if is_sources(train) else [train]
    source_rows = []
    for index, source in enumerate(sources):
        spec, source_options = source, options
        if hasattr(source, "path"):
            spec = source.path
            source_options = replace(options, data_format=source.format, fields=dict(source.fields or {}))
        before = train_scan.num_rows + eval_scan.num_rows
        what = "data.train" if len(sources) == 1 else f"data.train[{index}]"
        scan_source(spec, route, source_options, counter, what)
        label = source.label() if hasattr(source, "label") else str(spec)
        source_rows.append({"source": label, "num_rows": train_scan.num_rows + eval_scan.num_rows - before})
    if eval is not None:
        scan_source(eval, lambda s: eval_scan, options, counter, "data.eval")
    target_inputs = read_target_inputs(target) if target is not None else []

    findings: list[Finding] = []
    stats: dict[str, Any] = {
        "num_train": len(train_scan),
        "num_eval": len(eval_scan),
        "max_seq_len": options.max_seq_len,
    }
    if len(sources) > 1:
        stats["sources"] = source_rows
    findings += format_findings(train_scan, eval_scan, options, train)
    findings += duplicate_findings(train_scan, eval_scan, options)
    findings += length_findings(train_scan, eval_scan, options, prepared, stats)
    if options.records is LabeledText:
        findings += label_findings(train_scan, eval_scan, stats)
    findings += size_findings(train_scan, eval_scan, options, stats, eval is not None or bool(held_out))
    if compare:
        findings += representativeness_findings(train_scan, eval_scan, target_inputs, options, stats)
    findings += sensitive_findings(train_scan, eval_scan)
    report = make_report(options.task, findings, stats)
    return CheckResult(report, {"train": train_scan, "eval": eval_scan}, {"train": train, "eval": eval})


def detect_kind(spec: Any) -> str:
    """The record kind the data looks like: preference pairs, labeled rows, plain text, or (anything
    else) conversations."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files = expand_paths(specs[0], ROW_SUFFIXES | TEXT_SUFFIXES)
    if files[0].suffix.lower() in TEXT_SUFFIXES:
        return RECORD_KINDS[TextRecord]
    for row, _ in iter_rows(str(files[0]), ErrorPolicy(on_error="skip", max_skipped=10**12)):
        keys = set(row)
        if any(needed <= keys for needed in PAIR_FIELDS):
            return PAIRS
        if "label" in keys or "labels" in keys:
            return RECORD_KINDS[LabeledText]
        if keys & {"messages", "conversations", "instruction", "prompt"}:
            return RECORD_KINDS[Conversation]
        if "text" in keys:
            return RECORD_KINDS[TextRecord]
        break
    return RECORD_KINDS[Conversation]


def run_check(
    data: Any,
    eval: Any = None,
    target: str | None = None,
    *,
    kind: str,
    task: str,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    near_duplicate_threshold: float = 0.8,
    fix: str | Path | Claim | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
) -> tuple[CheckResult, dict[str, Any] | None]:
    """What `tunesmith data check` does: check data that becomes `kind` records (for `task`), token
    counts with `tokenizer`; with `fix` (a claimed output folder), write a cleaned copy there."""
    if not 0 < near_duplicate_threshold < 1:
        raise UserError(f"--near-dup-threshold must be between 0 and 1 (got {near_duplicate_threshold})")
    if kind == PAIRS:
        from tunesmith.data.doctor import pairs

        if fix:
            raise UserError("--fix does not clean preference pairs yet; drop the listed pairs by hand")
        if target is not None:
            raise UserError("--target is not compared for preference pairs yet; leave it out")
        report = pairs.check_pairs(data, eval, tokenizer, max_seq_len, task=task)
        return CheckResult(report, {}, {"train": data, "eval": eval}), None
    if kind == PROMPTS:
        from tunesmith.data.doctor import prompts

        if fix or target is not None:
            raise UserError("--fix and --target do not apply to prompt data yet; leave them out")
        report = prompts.check_prompts(
            data, eval, tokenizer, max_seq_len, task, prompt_template, system_prompt
        )
        return CheckResult(report, {}, {"train": data, "eval": eval}), None
    options = options_for(
        kind, task, max_seq_len=max_seq_len, near_duplicate_threshold=near_duplicate_threshold
    )
    result = check_data(data, eval, target, options, tokenizer)
    if fix is not None and not isinstance(fix, Claim):  # a plain path: the output-path rule decides
        fix = claim_output(
            fix, "data-fix", inputs=[*_spec_list(data), *_spec_list(eval), target], flag="--fix"
        )
    fixed = write_fixed(result, fix) if fix else None
    return result, fixed


def _spec_list(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def preflight(data: DataConfig, prepared: Any, kind: str, task: str) -> CheckReport:
    """The doctor before training: blocking errors raise (before the model loads); the report is returned.

    `data` is the config's data section, `prepared` the task's tokenized data (exact token
    counts), `kind` the record kind the data becomes (the task's `record_kind`).
    """
    if kind == PAIRS:
        from tunesmith.data.doctor import pairs

        return _stop_on_errors(pairs.preflight(data, prepared, task))
    if kind == PROMPTS:
        from tunesmith.data.doctor import prompts

        return _stop_on_errors(prompts.preflight(data, prepared, task))
    held_out = set()
    if data.eval is None:  # the held-out records came out of train: check them as the eval split
        held_out = {str(r.source) for r in prepared.eval_records if getattr(r, "source", None) is not None}
    options = options_for(
        kind,
        task,
        max_seq_len=data.max_seq_len,
        data_format=data.format,
        fields=dict(data.fields),
        system_prompt=data.system_prompt,
        label_columns=data.label_columns,
        # Rows that fail to parse were already skipped by data.on_error: skip (or stopped the run).
        format_severity="warning" if data.on_error == "skip" else "error",
        leakage_severity="error" if data.eval is not None else "warning",
    )
    sources = data.train_sources()
    train = sources if len(sources) > 1 else data.train
    result = check_data(train, data.eval, None, options, tokenizer=None, held_out=held_out, prepared=prepared)
    return _stop_on_errors(result.report)


def _stop_on_errors(report: CheckReport) -> CheckReport:
    if report.errors:
        listed = "; ".join(
            f"{f.title} ({f.count}{', e.g. ' + ', '.join(f.examples[:3]) if f.examples else ''})"
            for f in report.errors
        )
        raise UserError(
            f"data check: not ready to train: {listed}. Run `tunesmith data check` for details and --fix to write "
            "a cleaned copy, or set data.check: false to train anyway"
        )
    return report
