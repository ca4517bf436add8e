"""The data doctor's checks: what the scans found, as findings (severity, title, count, where, detail).

Each check reads the arrays a `SplitScan` gathered and returns `Finding`s; which checks apply
follows from the kind of record the data holds (`CheckOptions.records`), never from a task name.
Rules of thumb carry where they come from, quoted in the findings.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tunesmith.data.doctor.detect as detect  # the module itself, never the package being initialised
from tunesmith.data.doctor.scan import MAX_EXAMPLES, CheckOptions, Problems, SplitScan
from tunesmith.data.formats import Conversation, LabeledText, TextRecord
from tunesmith.data.load import spec_paths

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
VERDICTS = ("ready", "ready with warnings", "not ready")

MIN_INSTRUCT_EXAMPLES = 50  # OpenAI fine-tuning guide: "at least 50 to 100" examples show clear improvements
LIMA_EXAMPLES = 1000  # LIMA (Zhou et al. 2023): 1,000 curated examples were enough for a strong chat model
MIN_EXAMPLES_PER_CLASS = 100  # OpenAI's fine-tuning guide for classifiers: "at least ~100 examples per class"
MIN_PRETRAIN_TOKENS = 100_000  # below this, continued pretraining mostly memorises the text
MIN_EVAL_FOR_5_POINTS = 100  # binomial SE of a 50% accuracy is 5 points at n=100


@dataclass(frozen=True)
class Finding:
    """One kind of problem (or fact) about the data, with the first few places it occurs."""

    id: str  # stable name, e.g. "exact_duplicates"
    severity: str  # error (blocks training) | warning | info
    title: str
    count: int
    examples: tuple[str, ...]  # where: "path:line", or "path" for a whole file
    detail: str  # what it means and how to fix it

    def summary(self) -> str:
        """'title: count (e.g. first places)', one line."""
        where = f" (e.g. {', '.join(self.examples[:2])})" if self.examples else ""
        return f"{self.title}: {self.count}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "count": self.count,
            "examples": list(self.examples),
            "detail": self.detail,
        }


@dataclass
class CheckReport:
    """The doctor's answer: a verdict, the findings (most severe first) and statistics."""

    verdict: str  # ready | ready with warnings | not ready
    task: str
    findings: list[Finding]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`--json`, eval/data_check.json)."""
        return {
            "verdict": self.verdict,
            "task": self.task,
            "findings": [f.to_dict() for f in self.findings],
            "stats": self.stats,
        }


@dataclass
class CheckResult:
    """A report plus what the scan kept for `--fix`: per split, the rows to drop and why."""

    report: CheckReport
    scans: dict[str, SplitScan]
    specs: dict[str, Any]  # split -> what was read


def make_report(task: str, findings: list[Finding], stats: dict[str, Any]) -> CheckReport:
    findings = sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.id))
    severities = {f.severity for f in findings}
    verdict = (
        VERDICTS[2] if "error" in severities else VERDICTS[1] if "warning" in severities else VERDICTS[0]
    )
    return CheckReport(verdict, task, findings, stats)


def finding(id: str, severity: str, title: str, count: int, examples: list[str], detail: str) -> Finding:
    return Finding(id, severity, title, int(count), tuple(examples[:MAX_EXAMPLES]), detail)


def merged(scans: list[SplitScan], key: str) -> Problems:
    merged = Problems()
    for split in scans:
        problems = split.problems.get(key)
        if problems is None:
            continue
        merged.count += problems.count
        merged.examples += problems.examples[: MAX_EXAMPLES - len(merged.examples)]
        merged.notes += problems.notes
    return merged


FORMAT_FINDINGS = {
    "malformed_rows": (
        "rows that are not readable records",
        "Fix the JSON/CSV syntax on these lines or delete them.",
    ),
    "encoding": ("rows that are not valid UTF-8", "Re-save the file as UTF-8."),
    "schema": (
        "rows without the fields of the format",
        "Give every row the same fields, or map your columns with data.fields.",
    ),
    "field_types": ("fields of the wrong type", "Every text field must be a string."),
    "empty_fields": ("empty or whitespace-only fields", "Fill them in or drop the rows (--fix drops them)."),
    "unknown_roles": ("messages with an unknown role", "Use the roles system, user and assistant."),
    "no_assistant_turn": (
        "conversations without an assistant turn",
        "Nothing in them would be trained; add the reply or drop them.",
    ),
}


# Tool calls the row does not declare: the chat template renders the `tools` the model may call,
# so a call outside them teaches the model to call functions it was never shown.
TOOL_FINDINGS = {
    "calls_without_tools": (
        "conversations with tool calls but no `tools`",
        "The model learns to call functions it was never shown: give each row the `tools` "
        "(function schemas, OpenAI form) it may call, or drop the calls.",
    ),
    "undeclared_tool_calls": (
        "tool calls to a function missing from the row's `tools`",
        "The model learns to call a function the row did not declare (a misspelt name?): add it "
        "to the row's `tools`, or fix the call.",
    ),
}


def format_findings(
    train: SplitScan, eval: SplitScan, options: CheckOptions, train_spec: Any = None
) -> list[Finding]:
    """Rows that are not records of the format; `train_spec` (what data.train names) is what an
    empty training split points at."""
    findings = []
    for key, (title, fix) in FORMAT_FINDINGS.items():
        problems = merged([train, eval], key)
        if problems.count:
            first = problems.notes[0] if problems.notes else ""
            # Raw text for pretraining is decoded with replacement characters and the bad bytes
            # reported: a stray Latin-1 byte in a large corpus must not stop the run.
            severity = (
                "warning" if key == "encoding" and options.records is TextRecord else options.format_severity
            )
            findings.append(
                finding(
                    key,
                    severity,
                    title,
                    problems.count,
                    problems.examples,
                    f"First: {first}. {fix}",
                )
            )
    mojibake = merged([train, eval], "mojibake")
    if mojibake.count:
        findings.append(
            finding(
                "suspicious_characters",
                "warning",
                "text with replacement or mis-decoded characters",
                mojibake.count,
                mojibake.examples,
                "U+FFFD or mojibake such as 'Ã©'/'â€™' means the text was decoded with the wrong "
                "encoding somewhere upstream; re-export it as UTF-8.",
            )
        )
    for key, (title, fix) in TOOL_FINDINGS.items():
        problems = merged([train, eval], key)
        if problems.count:
            first = problems.notes[0] if problems.notes else ""
            findings.append(
                finding(key, "warning", title, problems.count, problems.examples, f"First: {first}. {fix}")
            )
    huge = merged([train, eval], "huge_records")
    if huge.count:
        findings.append(
            finding(
                "huge_records",
                "warning",
                "records over the size the checks read in full",
                huge.count,
                huge.examples,
                f"Records over {detect.SHINGLE_CHAR_LIMIT:,} characters are checked for near-duplicates on "
                "their beginning and their token counts are estimated; training cuts them to "
                "data.max_seq_len (or refuses those over the record limit). Split them.",
            )
        )
    if not len(train):
        files = spec_paths(train_spec)
        named = ", ".join(files) or "data.train"
        detail = (
            f"{named} holds no rows (empty or blank); point data.train at the file with your data."
            if train.num_rows == 0
            else f"Not one of the {train.num_rows} training rows of {named} could be read as a record; "
            "fix the format problems above."
        )
        findings.append(finding("no_usable_records", "error", "no usable training records", 0, files, detail))
    return findings


def duplicate_findings(train: SplitScan, eval: SplitScan, options: CheckOptions) -> list[Finding]:
    findings = []
    train_hashes = np.asarray(train.hashes, dtype=np.int64)
    eval_hashes = np.asarray(eval.hashes, dtype=np.int64)
    # Exact duplicates: every occurrence after the first of a normalized text.
    _, first_index = np.unique(train_hashes, return_index=True)
    is_first = np.zeros(len(train), dtype=bool)
    is_first[first_index] = True
    exact = np.flatnonzero(~is_first)
    conflicting: set[int] = set()
    if options.records is LabeledText and len(exact):
        conflicting = _conflicting_label_rows(train, train_hashes)
    plain_exact = [i for i in exact.tolist() if i not in conflicting]
    if plain_exact:
        first_of = dict(zip(train_hashes[first_index].tolist(), first_index.tolist(), strict=True))
        example = plain_exact[0]
        for index in plain_exact:
            train.removed[train.key(index)] = (
                f"exact duplicate of {train.location(first_of[train.hashes[index]])}"
            )
        findings.append(
            finding(
                "exact_duplicates",
                "warning",
                "exact duplicates in train",
                len(plain_exact),
                [train.location(i) for i in plain_exact],
                f"{len(plain_exact)} records repeat an earlier one (ignoring case and whitespace), e.g. "
                f"{train.location(example)} repeats {train.location(first_of[train.hashes[example]])}. Repeats are "
                "trained on several times per epoch and, when eval is held out from train, leak into it. "
                "--fix keeps the first copy.",
            )
        )
    # Exact leakage: eval records whose text is also in train.
    leaked = (
        np.flatnonzero(np.isin(eval_hashes, train_hashes))
        if len(eval_hashes) and len(train_hashes)
        else np.zeros(0, dtype=np.int64)
    )
    if len(leaked):
        for index in leaked.tolist():
            eval.removed[eval.key(index)] = "also in train (exact leakage)"
        findings.append(
            finding(
                "eval_leakage",
                options.leakage_severity,
                "eval records that are also in train",
                len(leaked),
                [eval.location(i) for i in leaked.tolist()],
                f"{len(leaked)} of {len(eval)} eval records appear verbatim in train, so eval scores would measure "
                "memorisation, not generalisation. Remove them from eval (--fix does) or from train.",
            )
        )
    # Near duplicates: MinHash/LSH over first copies in train and the unleaked eval records.
    train_rows = np.flatnonzero(is_first)
    eval_rows = np.setdiff1d(np.arange(len(eval)), np.asarray(leaked, dtype=np.int64))
    if len(train_rows) + len(eval_rows) >= 2:
        num_perm = options.num_perm
        train_signatures = np.asarray(train.signatures, dtype=np.uint32).reshape(-1, num_perm)
        eval_signatures = np.asarray(eval.signatures, dtype=np.uint32).reshape(-1, num_perm)
        signatures = np.concatenate([train_signatures[train_rows], eval_signatures[eval_rows]])
        pairs = detect.similar_pairs(signatures, options.near_duplicate_threshold)
        del signatures
        boundary = len(train_rows)
        within = pairs[pairs[:, 1] < boundary]
        across = pairs[(pairs[:, 0] < boundary) & (pairs[:, 1] >= boundary)]
        near = detect.later_members(within)
        if near:
            duplicates = sorted(near)
            for row in duplicates:
                train.removed[train.key(int(train_rows[row]))] = (
                    f"near duplicate of {train.location(int(train_rows[near[row]]))}"
                )
            example = duplicates[0]
            findings.append(
                finding(
                    "near_duplicates",
                    "warning",
                    "near-duplicates in train",
                    len(duplicates),
                    [train.location(int(train_rows[r])) for r in duplicates],
                    f"{len(duplicates)} records are near-copies (estimated Jaccard >= {options.near_duplicate_threshold} "
                    f"on word 3-grams) of an earlier one, e.g. {train.location(int(train_rows[example]))} ~ "
                    f"{train.location(int(train_rows[near[example]]))}. They over-weight a few samples; --fix keeps "
                    "one per group.",
                )
            )
        if len(across):
            eval_hit = sorted(set((across[:, 1] - boundary).tolist()))
            partner = {int(b - boundary): int(a) for a, b in across.tolist()}
            for row in eval_hit:
                eval.removed[eval.key(int(eval_rows[row]))] = (
                    f"near duplicate of train {train.location(int(train_rows[partner[row]]))}"
                )
            example = eval_hit[0]
            findings.append(
                finding(
                    "eval_near_leakage",
                    "warning",
                    "eval records nearly identical to train records",
                    len(eval_hit),
                    [eval.location(int(eval_rows[r])) for r in eval_hit],
                    f"{len(eval_hit)} eval records are near-copies of training records, e.g. "
                    f"{eval.location(int(eval_rows[example]))} ~ {train.location(int(train_rows[partner[example]]))}; "
                    "they inflate eval scores. --fix removes them from eval.",
                )
            )
    return findings


def _conflicting_label_rows(train: SplitScan, hashes: np.ndarray) -> set[int]:
    """Rows whose text repeats with another label; the groups are kept on the scan for the finding."""
    values, counts = np.unique(hashes, return_counts=True)
    repeated = set(values[counts > 1].tolist())
    groups: dict[int, list[int]] = defaultdict(list)
    for index, value in enumerate(hashes.tolist()):
        if value in repeated:
            groups[value].append(index)
    rows: set[int] = set()
    for members in groups.values():
        if len({str(train.labels[i]) for i in members}) > 1:
            rows.update(members)
            train.conflict_groups.append(members)
    return rows


def _describe_lengths(lengths: np.ndarray) -> dict[str, Any]:
    if not len(lengths):
        return {"total": 0}
    return {
        "total": int(lengths.sum()),
        "mean": round(float(lengths.mean()), 1),
        "median": int(np.median(lengths)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
    }


def length_findings(
    train: SplitScan, eval: SplitScan, options: CheckOptions, prepared: Any, stats: dict[str, Any]
) -> list[Finding]:
    findings: list[Finding] = []
    limit = options.max_seq_len
    exact = prepared is not None and not len(train.token_lengths)
    if exact and options.records is TextRecord:
        # Training reads documents as fixed blocks from its token cache; only the totals mean anything.
        counted = {
            key: getattr(getattr(prepared.stats, key), "num_tokens", 0) or 0 for key in ("train", "eval")
        }
        stats["tokens"] = {key: {"total": int(value)} for key, value in counted.items()} | {
            "counted": "exact"
        }
        return findings
    if exact:
        train_lengths = np.asarray([len(e.input_ids) for e in prepared.train], dtype=np.int64)
        eval_lengths = np.asarray([len(e.input_ids) for e in prepared.eval], dtype=np.int64)
    else:
        train_lengths = np.asarray(train.token_lengths, dtype=np.int64)
        eval_lengths = np.asarray(eval.token_lengths, dtype=np.int64)
    edges = detect.length_bins(limit)
    stats["tokens"] = {
        "train": _describe_lengths(train_lengths),
        "eval": _describe_lengths(eval_lengths),
        "counted": "exact (after truncation)" if exact else "estimated with the model's tokenizer",
    }
    stats["length_histogram"] = {
        "edges": edges,
        "train": detect.histogram(train_lengths, edges),
        "eval": detect.histogram(eval_lengths, edges),
    }
    if options.records is TextRecord:
        return findings  # documents are split into max_seq_len blocks, nothing is cut off
    truncated, emptied = Problems(), Problems()
    if exact:
        for key in ("train", "eval"):
            tokenize_stats = getattr(prepared.stats, key)
            truncated.count += getattr(tokenize_stats, "num_truncated", 0) or 0
            emptied.count += getattr(tokenize_stats, "num_dropped_no_supervised", 0) or 0
            emptied.examples += list(getattr(tokenize_stats, "dropped_sources", []) or [])[:MAX_EXAMPLES]
        truncated.examples = [e.source for e in prepared.train if len(e.input_ids) >= limit][:MAX_EXAMPLES]
    else:
        for split in (train, eval):
            prompt_lengths = np.asarray(split.prompt_lengths, dtype=np.int64)
            for index in np.flatnonzero(np.asarray(split.token_lengths, dtype=np.int64) > limit).tolist():
                truncated.add(split.location(index))
            if options.records is Conversation:
                for index in np.flatnonzero(prompt_lengths >= limit).tolist():
                    emptied.add(split.location(index))
    total = len(train_lengths) + len(eval_lengths) + (emptied.count if exact else 0)
    if truncated.count:
        share = truncated.count / max(1, total)
        findings.append(
            finding(
                "truncated",
                "warning",
                f"samples longer than max_seq_len={limit}",
                truncated.count,
                truncated.examples,
                f"{truncated.count} samples ({share:.1%}) are cut at {limit} tokens; their ends are not trained. "
                "Raise data.max_seq_len (--max-seq-len) or shorten them.",
            )
        )
    if emptied.count:
        everything = emptied.count >= total
        findings.append(
            finding(
                "no_supervised_tokens",
                "error" if everything else "warning",
                "samples that lose every trained token to truncation",
                emptied.count,
                emptied.examples,
                f"{emptied.count} samples have a prompt of {limit}+ tokens, so truncation cuts the whole reply and they "
                "are dropped from training. Raise data.max_seq_len or shorten the prompts.",
            )
        )
    return findings


def label_findings(train: SplitScan, eval: SplitScan, stats: dict[str, Any]) -> list[Finding]:
    def counts(labels: list[Any]) -> Counter:
        counter: Counter = Counter()
        for label in labels:
            counter.update(label if isinstance(label, tuple) else [label])
        return counter

    train_counts, eval_counts = counts(train.labels), counts(eval.labels)
    findings = []
    ratio = max(train_counts.values()) / min(train_counts.values()) if train_counts else 0.0
    stats["labels"] = {
        "train": dict(train_counts.most_common()),
        "eval": dict(eval_counts.most_common()),
        "imbalance_ratio": round(ratio, 2),
    }
    if len(train_counts) == 1:
        only = next(iter(train_counts))
        findings.append(
            finding(
                "single_label",
                "error",
                "only one label in train",
                1,
                [],
                f"Every training example has the label {only!r}; a classifier needs two or more.",
            )
        )
    elif ratio >= 3:
        common, rare = train_counts.most_common()[0], train_counts.most_common()[-1]
        findings.append(
            finding(
                "label_imbalance",
                "warning" if ratio >= 10 else "info",
                "imbalanced labels",
                len(train_counts),
                [],
                f"The most common label {common[0]!r} has {common[1]} examples, the rarest {rare[0]!r} {rare[1]} "
                f"({ratio:.1f}:1). Accuracy will flatter a majority-class model; read macro-F1, collect more of the "
                "rare labels, or set data.class_weights: balanced.",
            )
        )
    unseen = Problems()
    for index, label in enumerate(eval.labels):
        if any(item not in train_counts for item in (label if isinstance(label, tuple) else [label])):
            unseen.add(eval.location(index))
    if unseen.count:
        names = sorted(set(eval_counts) - set(train_counts))
        findings.append(
            finding(
                "labels_only_in_eval",
                "warning",
                "eval labels never seen in train",
                unseen.count,
                unseen.examples,
                f"The labels {', '.join(map(repr, names))} appear only in eval; the model cannot learn to predict them. "
                "Add training examples for them or drop them from eval.",
            )
        )
    groups = train.conflict_groups
    if groups:
        examples = [train.location(i) for members in groups for i in members]
        for members in groups:
            for index in members:
                train.removed[train.key(index)] = "identical text with conflicting labels"
        first = groups[0]
        findings.append(
            finding(
                "conflicting_labels",
                "warning",
                "identical texts with conflicting labels",
                len(groups),
                examples,
                f"{len(groups)} texts appear with different labels, e.g. {train.location(first[0])} "
                f"({train.labels[first[0]]!r}) and {train.location(first[1])} ({train.labels[first[1]]!r}). The model "
                "is taught both answers; fix the labels (--fix drops every copy).",
            )
        )
    return findings


def size_findings(
    train: SplitScan, eval: SplitScan, options: CheckOptions, stats: dict[str, Any], has_eval: bool
) -> list[Finding]:
    findings = []
    count = len(train)
    tokens = stats.get("tokens", {}).get("train", {}).get("total", 0)
    if options.records is Conversation and 0 < count < MIN_INSTRUCT_EXAMPLES:
        findings.append(
            finding(
                "too_few_examples",
                "warning",
                f"only {count} training conversations",
                count,
                [],
                f"Fewer than ~{MIN_INSTRUCT_EXAMPLES} instruction examples rarely change a model's behaviour (OpenAI "
                "fine-tuning guide: clear improvements from 50-100 well-crafted examples; LIMA, Zhou et al. 2023, used "
                f"{LIMA_EXAMPLES} curated ones). Collect more, or expect a small effect.",
            )
        )
    elif options.records is Conversation and count < LIMA_EXAMPLES and count:
        findings.append(
            finding(
                "dataset_size",
                "info",
                f"{count} training conversations",
                count,
                [],
                f"Enough to start (OpenAI fine-tuning guide: 50-100 examples show clear improvements); LIMA (Zhou et al. "
                f"2023) reached a strong chat model with {LIMA_EXAMPLES} carefully curated examples.",
            )
        )
    if options.records is LabeledText and count:
        labels = Counter(
            label for item in train.labels for label in (item if isinstance(item, tuple) else [item])
        )
        small = {label: n for label, n in labels.items() if n < MIN_EXAMPLES_PER_CLASS}
        if small:
            shown = ", ".join(f"{label!r}: {n}" for label, n in sorted(small.items(), key=lambda x: x[1])[:6])
            findings.append(
                finding(
                    "too_few_examples",
                    "warning",
                    f"{len(small)} labels with fewer than {MIN_EXAMPLES_PER_CLASS} examples",
                    len(small),
                    [],
                    f"{shown}. OpenAI's fine-tuning guide for classifiers asks for at least ~{MIN_EXAMPLES_PER_CLASS} "
                    "examples per class; with fewer, expect unstable per-class results.",
                )
            )
    if options.records is TextRecord and count and tokens and tokens < MIN_PRETRAIN_TOKENS:
        findings.append(
            finding(
                "too_few_examples",
                "warning",
                f"only {tokens:,} tokens of domain text",
                tokens,
                [],
                f"Continued pretraining on under ~{MIN_PRETRAIN_TOKENS:,} tokens mostly memorises the text; "
                "Gururangan et al. 2020 ('Don't Stop Pretraining') adapted on millions (task text) to billions "
                "(domain text) of tokens. Add more text or train few steps with a small learning rate.",
            )
        )
    num_eval = len(eval)
    if not has_eval:
        findings.append(
            finding(
                "no_eval",
                "info",
                "no eval split",
                0,
                [],
                "Training holds out data.eval_fraction of train for evaluation; give --eval "
                "(data.eval) to check that split too.",
            )
        )
    elif num_eval and options.records is not TextRecord:
        error = (0.25 / num_eval) ** 0.5
        if num_eval < MIN_EVAL_FOR_5_POINTS:
            findings.append(
                finding(
                    "small_eval",
                    "info",
                    f"eval split of {num_eval} examples",
                    num_eval,
                    [],
                    f"The binomial standard error of an accuracy near 50% is {error:.1%} with {num_eval} examples, "
                    f"so two models closer than ~{2.8 * error:.0%} (2.8 SE, 95% two-sided) cannot be told apart. "
                    f"{MIN_EVAL_FOR_5_POINTS}+ examples bring it to 5 points, 400 to 2.5.",
                )
            )
    return findings
