"""The data doctor: is this data fit to train on?

One streaming pass per file reads every row (through `load.iter_rows` and `formats.to_record`,
collecting problems instead of stopping at the first), fingerprints it (exact hash, MinHash
signature), counts its tokens and scans it for sensitive content. The findings come after the
pass, from arrays, so 1M records fit in a few hundred MB.

    result = check_data("train.jsonl", "eval.jsonl", options=CheckOptions(task="instruct"), tokenizer=tok)
    result.report  # {"verdict", "task", "findings": [...], "stats": {...}}  (eval/data_check.json)

`tunesmith data check` prints it; `preflight` runs it before every training run.
"""

from __future__ import annotations

import html
import json
import random
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data import check_scan as scan
from tunesmith.data.formats import (
    Conversation,
    LabeledText,
    apply_field_mapping,
    detect_format,
    message_text,
    to_record,
)
from tunesmith.data.load import ROW_SUFFIXES, TEXT_SUFFIXES, ErrorPolicy, Source, expand_paths, iter_rows
from tunesmith.errors import UserError

MAX_EXAMPLES = 5  # locations shown per finding
BATCH_SIZE = 2048  # records tokenized and MinHashed together
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
VERDICTS = ("ready", "ready with warnings", "not ready")

# Rules of thumb, with where they come from (quoted in the findings).
MIN_INSTRUCT_EXAMPLES = 50  # OpenAI fine-tuning guide: "at least 50 to 100" examples show clear improvements
LIMA_EXAMPLES = 1000  # LIMA (Zhou et al. 2023): 1,000 curated examples were enough for a strong chat model
MIN_EXAMPLES_PER_CLASS = 100  # OpenAI's fine-tuning guide for classifiers: "at least ~100 examples per class"
MIN_PRETRAIN_TOKENS = 100_000  # below this, continued pretraining mostly memorises the text
MIN_EVAL_FOR_5_POINTS = 100  # binomial SE of a 50% accuracy is 5 points at n=100


@dataclass
class CheckOptions:
    task: str = "instruct"
    max_seq_len: int = 512
    data_format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    label_columns: list[str] | None = None  # classify multi-label: one 0/1 column per label
    near_duplicate_threshold: float = 0.8  # estimated Jaccard of word 3-grams; 0.8 is the usual dedup bar
    num_perm: int = 128  # MinHash permutations: Jaccard estimate within about +-0.03 near 0.85
    format_severity: str = "error"  # rows that cannot be used; 'warning' when the run skips them anyway
    leakage_severity: str = "error"  # 'warning' for a held-out eval: its leaks are train's duplicates
    min_similarity: float = 0.25  # TF-IDF cosine below which an input has "no similar training example"
    max_reference_inputs: int = 50_000  # training inputs sampled for the coverage check
    max_coverage_inputs: int = 5_000  # eval/target inputs checked for coverage
    seed: int = 0


@dataclass
class Problems:
    """Occurrences of one kind of problem: how many, and the first few places."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, location: str, note: str | None = None) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(location)
            if note:
                self.notes.append(note)


class SplitScan:
    """Everything one pass gathers about one split (train, eval or target), per record in arrays."""

    def __init__(self, name: str, want_words: bool, seed: int, max_reservoir: int):
        self.name = name
        self.paths: list[str] = []
        self._path_ids: dict[str, int] = {}
        self.file_ids = array("i")
        self.lines = array("i")  # -1 where the record is a whole file
        self.hashes: list[int] = []
        self.signatures: list[np.ndarray] = []
        self.token_lengths = array("i")
        self.prompt_lengths = array("i")  # tokens before the first trained token (instruct)
        self.labels: list[Any] = []
        self.word_counts: Counter = Counter()
        self.word_lengths = array("i")
        self.problems: dict[str, Problems] = defaultdict(Problems)
        self.conflict_groups: list[list[int]] = []  # classify: rows of one text with different labels
        self.removed: dict[tuple[str, int], str] = {}  # (path, line) -> why (for --fix)
        self.reservoir: list[str] = []
        self.reservoir_index: list[int] = []
        self.want_words = want_words
        self._random = random.Random(seed)
        self._max_reservoir = max_reservoir
        self.num_rows = 0

    def __len__(self) -> int:
        return len(self.lines)

    def add_record(self, source: Source) -> int:
        path_id = self._path_ids.setdefault(source.path, len(self.paths))
        if path_id == len(self.paths):
            self.paths.append(source.path)
        self.file_ids.append(path_id)
        self.lines.append(-1 if source.line is None else source.line)
        return len(self.lines) - 1

    def key(self, index: int) -> tuple[str, int]:
        return self.paths[self.file_ids[index]], self.lines[index]

    def location(self, index: int) -> str:
        path, line = self.key(index)
        return path if line < 0 else f"{path}:{line}"

    def sample_input(self, index: int, text: str) -> None:
        """Reservoir sampling: a uniform sample of inputs for the TF-IDF coverage check."""
        if len(self.reservoir) < self._max_reservoir:
            self.reservoir.append(text)
            self.reservoir_index.append(index)
            return
        slot = self._random.randrange(index + 1)
        if slot < self._max_reservoir:
            self.reservoir[slot] = text
            self.reservoir_index[slot] = index


@dataclass
class CheckResult:
    report: dict[str, Any]
    scans: dict[str, SplitScan]
    specs: dict[str, Any]  # split -> what was read (for --fix)


# ---------------------------------------------------------------------------------------------
# Reading and scanning


def _source_of_message(message: str) -> str:
    """'path:12: malformed JSON ...' -> 'path:12'."""
    head = message.split(": ", 1)[0]
    return head


def _format_problem_id(message: str) -> str:
    if "not valid UTF-8" in message or "undecodable" in message:
        return "encoding"
    if "unknown role" in message:
        return "unknown_roles"
    if "no assistant turn" in message:
        return "no_assistant_turn"
    if "is empty" in message:
        return "empty_fields"
    if "must be a string" in message:
        return "field_types"
    if (
        "malformed JSON" in message
        or "expected a JSON object" in message
        or "line is" in message
        or "more fields than the header" in message
    ):
        return "malformed_rows"
    return "schema"


def record_texts(record: Any) -> tuple[str, str, list[tuple[str, str]]]:
    """(whole text for duplicates and scanning, the input side, [(role, content)] for token counts)."""
    if isinstance(record, Conversation):
        whole = "\n".join(f"{m['role']}: {message_text(m)}" for m in record.messages)
        inputs = "\n".join(m["content"] for m in record.messages if m["role"] == "user")
        return whole, inputs, [(m["role"], message_text(m)) for m in record.messages]
    if isinstance(record, LabeledText):
        whole = record.text if record.text_pair is None else f"{record.text}\n{record.text_pair}"
        return whole, whole, []
    return record.text, record.text, []


class TokenCounter:
    """Token counts per record with the model's tokenizer, estimated for chat templates.

    Rendering every conversation through its Jinja template costs ~1 ms; here each message is
    tokenized once (in batches, by the Rust tokenizer) and the template's overhead per message is
    measured once on a probe conversation. Exact counts come from `tasks` at training time.
    """

    def __init__(self, tokenizer: Any, task: str, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.task = task
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.base, self.per_message, self.header = 0, 4, 3
        if task == "instruct":
            self._measure_template(chat_template)

    def lengths(self, texts: list[Any], special: bool = False) -> list[int]:
        if not texts:
            return []
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [len(e) for e in encode(texts, add_special_tokens=special)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]

    def _measure_template(self, override: str | None) -> None:
        from tunesmith.data.templates import resolve_chat_template

        try:
            template = resolve_chat_template(self.tokenizer, override)
            user, reply = "Hello there, how are you?", "Fine, thank you."
            one = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            content = sum(self.lengths([user, reply]))
            two = len(self._encode(template.render(self.tokenizer, one)))
            four = len(self._encode(template.render(self.tokenizer, one + one)))
            prompt = len(self._encode(template.render(self.tokenizer, one[:1])))
            generation = len(
                self._encode(template.render(self.tokenizer, one[:1], add_generation_prompt=True))
            )
        except Exception:  # any template trouble: keep the generic estimate; training reports exact counts
            return
        pair = max(0, four - two - content)
        self.per_message = pair / 2
        self.base = max(0, two - content - pair)
        self.header = max(0, generation - prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(self, batch: list[tuple[Any, list[tuple[str, str]]]]) -> tuple[list[int], list[int]]:
        """(total tokens, tokens before the first trained token) per record of the batch."""
        if self.task != "instruct":
            texts = [
                (r.text, r.text_pair) if isinstance(r, LabeledText) and r.text_pair else r.text
                for r, _ in batch
            ]
            totals = self.lengths(texts, special=self.task == "classify")
            return totals, [0] * len(totals)
        contents = [content for _, turns in batch for _, content in turns]
        sizes = iter(self.lengths(contents))
        totals, prompts = [], []
        for _, turns in batch:
            total = float(self.base)
            prompt = None
            for role, _ in turns:
                size = next(sizes)
                if role == "assistant" and prompt is None:
                    prompt = total + self.header
                total += size + self.per_message
            totals.append(round(total))
            prompts.append(round(prompt if prompt is not None else total))
        return totals, prompts


def scan_source(
    spec: Any,
    route: Callable[[Source], SplitScan | None],
    options: CheckOptions,
    counter: TokenCounter | None,
    what: str,
) -> None:
    """Read every row of `spec` once; each usable record goes to the split `route` names."""
    policy = ErrorPolicy(on_error="skip", max_skipped=10**12)
    detected = None if options.data_format == "auto" else options.data_format
    batch: list[tuple[SplitScan, int, Any, list[tuple[str, str]], str]] = []
    first_scan: SplitScan | None = None
    for row, source in iter_rows(spec, policy, what):
        target = route(source)
        if target is None:
            continue
        first_scan = first_scan or target
        target.num_rows += 1
        location = str(source)
        row = apply_field_mapping(row, options.fields)
        if options.label_columns:
            from tunesmith.data.labels import columns_to_label_lists

            try:
                ((row, _),) = columns_to_label_lists([(row, source)], options.label_columns)
            except UserError as exc:
                target.problems["schema"].add(location, str(exc))
                target.removed[(source.path, source.line or -1)] = "format: " + str(exc)
                continue
        if detected is None:
            try:
                detected = detect_format(row, options.task, source)
            except UserError as exc:
                target.problems["schema"].add(location, str(exc))
                target.removed[(source.path, source.line or -1)] = "format: " + str(exc)
                continue
        try:
            record = to_record(row, detected, source, options.system_prompt)
        except ValueError as exc:
            target.problems[_format_problem_id(str(exc))].add(location, str(exc))
            target.removed[(source.path, source.line or -1)] = "format: " + str(exc)
            continue
        whole, inputs, turns = record_texts(record)
        if turns and any(not content.strip() for _, content in turns):
            message = f"{location}: a message has empty or whitespace-only content"
            target.problems["empty_fields"].add(location, message)
            target.removed[(source.path, source.line or -1)] = "empty message"
            continue
        index = target.add_record(source)
        if "\ufffd" in whole or "Ã©" in whole or "â€" in whole:
            target.problems["mojibake"].add(location)
        for kind, masked in scan.find_sensitive(whole):
            target.problems[kind].add(location, masked)
        normalized = scan.normalize_text(whole)
        target.hashes.append(scan.exact_hash(normalized))
        if isinstance(record, LabeledText):
            label = record.label
            target.labels.append(tuple(sorted(map(str, label))) if isinstance(label, list) else str(label))
        if target.want_words:
            input_words = scan.words(inputs)
            target.word_counts.update(input_words)
            target.word_lengths.append(len(input_words))
            target.sample_input(index, inputs)
        batch.append((target, index, record, turns, normalized))
        if len(batch) >= BATCH_SIZE:
            _flush(batch, options, counter)
            batch = []
    _flush(batch, options, counter)
    if first_scan is not None or policy.skipped:
        owner = first_scan or route(Source(str(spec)))
        if owner is not None:
            for message in policy.skipped:
                location = _source_of_message(message)
                owner.problems[_format_problem_id(message)].add(location, message)


def _flush(batch: list, options: CheckOptions, counter: TokenCounter | None) -> None:
    if not batch:
        return
    signatures = scan.minhash_signatures([item[4] for item in batch], options.num_perm)
    totals, prompts = counter.count([(item[2], item[3]) for item in batch]) if counter else ([], [])
    for position, (target, _, _, _, _) in enumerate(batch):
        target.signatures.append(signatures[position])
        if counter:
            target.token_lengths.append(totals[position])
            target.prompt_lengths.append(prompts[position])


def read_target_inputs(path: str) -> list[tuple[str, str]]:
    """A sample of real inputs: a .txt file (one input per line) or rows with a prompt-like field."""
    inputs: list[tuple[str, str]] = []
    for file in expand_paths(path, ROW_SUFFIXES | TEXT_SUFFIXES, "--target"):
        if file.suffix.lower() in TEXT_SUFFIXES:
            for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if line.strip():
                    inputs.append((f"{file}:{number}", line))
            continue
        for row, source in iter_rows(str(file), ErrorPolicy(on_error="skip", max_skipped=10**12), "--target"):
            if isinstance(row.get("messages"), list):
                text = "\n".join(
                    str(m.get("content", ""))
                    for m in row["messages"]
                    if isinstance(m, dict) and m.get("role") == "user"
                )
            else:
                parts = [row.get(k) for k in ("instruction", "prompt", "question", "input", "text")]
                text = "\n".join(p for p in parts if isinstance(p, str) and p.strip())
            if text.strip():
                inputs.append((str(source), text))
    return inputs


# ---------------------------------------------------------------------------------------------
# The check


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
    counter = TokenCounter(tokenizer, options.task, chat_template) if tokenizer is not None else None
    held_out = held_out or set()
    scan_source(
        train, lambda s: eval_scan if str(s) in held_out else train_scan, options, counter, "data.train"
    )
    if eval is not None:
        scan_source(eval, lambda s: eval_scan, options, counter, "data.eval")
    target_inputs = read_target_inputs(target) if target is not None else []

    findings: list[dict[str, Any]] = []
    stats: dict[str, Any] = {
        "num_train": len(train_scan),
        "num_eval": len(eval_scan),
        "max_seq_len": options.max_seq_len,
    }
    findings += _format_findings(train_scan, eval_scan, options)
    findings += _duplicate_findings(train_scan, eval_scan, options)
    findings += _length_findings(train_scan, eval_scan, options, prepared, stats)
    if options.task == "classify":
        findings += _label_findings(train_scan, eval_scan, stats)
    findings += _size_findings(train_scan, eval_scan, options, stats, eval is not None or bool(held_out))
    if compare:
        findings += _representativeness_findings(train_scan, eval_scan, target_inputs, options, stats)
    findings += _sensitive_findings(train_scan, eval_scan)
    findings.sort(key=lambda f: (SEVERITY_ORDER[f["severity"]], f["id"]))
    severities = {f["severity"] for f in findings}
    verdict = (
        VERDICTS[2] if "error" in severities else VERDICTS[1] if "warning" in severities else VERDICTS[0]
    )
    report = {"verdict": verdict, "task": options.task, "findings": findings, "stats": stats}
    return CheckResult(report, {"train": train_scan, "eval": eval_scan}, {"train": train, "eval": eval})


def finding(
    id: str, severity: str, title: str, count: int, examples: list[str], detail: str
) -> dict[str, Any]:
    return {
        "id": id,
        "severity": severity,
        "title": title,
        "count": int(count),
        "examples": list(examples[:MAX_EXAMPLES]),
        "detail": detail,
    }


def _merged(scans: list[SplitScan], key: str) -> Problems:
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


def _format_findings(train: SplitScan, eval: SplitScan, options: CheckOptions) -> list[dict[str, Any]]:
    findings = []
    for key, (title, fix) in FORMAT_FINDINGS.items():
        problems = _merged([train, eval], key)
        if problems.count:
            first = problems.notes[0] if problems.notes else ""
            # Raw text for pretraining is decoded with replacement characters and the bad bytes
            # reported: a stray Latin-1 byte in a large corpus must not stop the run.
            severity = (
                "warning" if key == "encoding" and options.task == "pretrain" else options.format_severity
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
    mojibake = _merged([train, eval], "mojibake")
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
    if not len(train):
        findings.append(
            finding(
                "no_usable_records",
                "error",
                "no usable training records",
                0,
                [],
                "Not one training row could be read as a record; fix the format problems above.",
            )
        )
    return findings


def _duplicate_findings(train: SplitScan, eval: SplitScan, options: CheckOptions) -> list[dict[str, Any]]:
    findings = []
    train_hashes = np.asarray(train.hashes, dtype=np.int64)
    eval_hashes = np.asarray(eval.hashes, dtype=np.int64)
    # Exact duplicates: every occurrence after the first of a normalized text.
    _, first_index = np.unique(train_hashes, return_index=True)
    is_first = np.zeros(len(train), dtype=bool)
    is_first[first_index] = True
    exact = np.flatnonzero(~is_first)
    conflicting: set[int] = set()
    if options.task == "classify" and len(exact):
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
        np.flatnonzero(np.isin(eval_hashes, train_hashes)) if len(eval_hashes) and len(train_hashes) else []
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
        pairs = scan.similar_pairs(signatures, options.near_duplicate_threshold)
        del signatures
        boundary = len(train_rows)
        within = pairs[pairs[:, 1] < boundary]
        across = pairs[(pairs[:, 0] < boundary) & (pairs[:, 1] >= boundary)]
        near = scan.later_members(within)
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


def _length_findings(
    train: SplitScan, eval: SplitScan, options: CheckOptions, prepared: Any, stats: dict[str, Any]
) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    limit = options.max_seq_len
    exact = prepared is not None and not len(train.token_lengths)
    if exact and options.task == "pretrain":
        # Training reads documents as fixed blocks from its token cache; only the totals mean anything.
        counted = {key: getattr(prepared.stats.get(key), "num_tokens", 0) or 0 for key in ("train", "eval")}
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
    edges = scan.length_bins(limit)
    stats["tokens"] = {
        "train": _describe_lengths(train_lengths),
        "eval": _describe_lengths(eval_lengths),
        "counted": "exact (after truncation)" if exact else "estimated with the model's tokenizer",
    }
    stats["length_histogram"] = {
        "edges": edges,
        "train": scan.histogram(train_lengths, edges),
        "eval": scan.histogram(eval_lengths, edges),
    }
    if options.task == "pretrain":
        return findings  # documents are split into max_seq_len blocks, nothing is cut off
    truncated, emptied = Problems(), Problems()
    if exact:
        for key in ("train", "eval"):
            tokenize_stats = prepared.stats.get(key)
            truncated.count += getattr(tokenize_stats, "num_truncated", 0) or 0
            emptied.count += getattr(tokenize_stats, "num_dropped_no_supervised", 0) or 0
            emptied.examples += list(getattr(tokenize_stats, "dropped_sources", []) or [])[:MAX_EXAMPLES]
        truncated.examples = [e.source for e in prepared.train if len(e.input_ids) >= limit][:MAX_EXAMPLES]
    else:
        for split in (train, eval):
            prompt_lengths = np.asarray(split.prompt_lengths, dtype=np.int64)
            for index in np.flatnonzero(np.asarray(split.token_lengths, dtype=np.int64) > limit).tolist():
                truncated.add(split.location(index))
            if options.task == "instruct":
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


def _label_findings(train: SplitScan, eval: SplitScan, stats: dict[str, Any]) -> list[dict[str, Any]]:
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


def _size_findings(
    train: SplitScan, eval: SplitScan, options: CheckOptions, stats: dict[str, Any], has_eval: bool
) -> list[dict[str, Any]]:
    findings = []
    count = len(train)
    tokens = stats.get("tokens", {}).get("train", {}).get("total", 0)
    if options.task == "instruct" and 0 < count < MIN_INSTRUCT_EXAMPLES:
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
    elif options.task == "instruct" and count < LIMA_EXAMPLES and count:
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
    if options.task == "classify" and count:
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
    if options.task == "pretrain" and count and tokens and tokens < MIN_PRETRAIN_TOKENS:
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
    elif num_eval and options.task != "pretrain":
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


def _representativeness_findings(
    train: SplitScan,
    eval: SplitScan,
    target_inputs: list[tuple[str, str]],
    options: CheckOptions,
    stats: dict[str, Any],
) -> list[dict[str, Any]]:
    findings = []
    if target_inputs:
        name = "target inputs"
        sample = target_inputs[: options.max_coverage_inputs]
        texts = [text for _, text in sample]
        locations = [where for where, _ in sample]
        word_lists = [scan.words(text) for text in texts]
        counts: Counter = Counter(w for ws in word_lists for w in ws)
        lengths = np.asarray([len(ws) for ws in word_lists])
    elif len(eval):
        name = "eval inputs"
        texts = eval.reservoir
        locations = [eval.location(i) for i in eval.reservoir_index]
        counts = eval.word_counts
        lengths = np.asarray(eval.word_lengths)
    else:
        return findings
    train_lengths = np.asarray(train.word_lengths)
    if not len(train_lengths) or not len(lengths):
        return findings
    edges = [0, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    length_js = scan.js_divergence(
        np.asarray(scan.histogram(train_lengths, edges)), np.asarray(scan.histogram(lengths, edges))
    )
    vocabulary_js = scan.js_divergence(train.word_counts, counts)
    uncovered = scan.uncovered_inputs(train.reservoir, texts, options.min_similarity)
    stats["representativeness"] = {
        "compared": name,
        "length_js": round(length_js, 4),
        "vocabulary_js": round(vocabulary_js, 4),
        "uncovered": len(uncovered),
        "checked": len(texts),
    }
    train_median, other_median = float(np.median(train_lengths)), float(np.median(lengths))
    words_text = f"median {other_median:.0f} words vs {train_median:.0f} in train"
    if length_js > 0.3:
        longer = "longer" if other_median > train_median else "shorter"
        findings.append(
            finding(
                "length_shift",
                "warning",
                f"{name} are {longer} than train",
                len(lengths),
                [],
                f"Length distributions differ (Jensen-Shannon divergence {length_js:.2f} bits; {words_text}). The model "
                f"is trained on inputs unlike the ones it will see; add training samples of that length.",
            )
        )
    missing = scan.overrepresented_words(
        Counter(w for i in uncovered for w in scan.words(texts[i])) if uncovered else counts,
        train.word_counts,
    )
    topics = f" Words frequent there but rare in train: {', '.join(missing)}." if missing else ""
    if vocabulary_js > 0.5:
        findings.append(
            finding(
                "vocabulary_shift",
                "warning",
                f"{name} use different words than train",
                len(lengths),
                [],
                f"Vocabulary Jensen-Shannon divergence {vocabulary_js:.2f} bits (0 = same, 1 = disjoint).{topics}",
            )
        )
    if uncovered:
        share = len(uncovered) / len(texts)
        findings.append(
            finding(
                "uncovered_inputs",
                "warning" if share > 0.2 else "info",
                f"{name} with no similar training example",
                len(uncovered),
                [locations[i] for i in uncovered],
                f"{len(uncovered)} of {len(texts)} checked {name} ({share:.0%}) have no training input with TF-IDF "
                f"cosine similarity >= {options.min_similarity}.{topics} Add training examples like them.",
            )
        )
    elif not findings:
        findings.append(
            finding(
                "representative",
                "info",
                f"{name} resemble train",
                0,
                [],
                f"Length JS divergence {length_js:.2f}, vocabulary JS divergence {vocabulary_js:.2f} bits; "
                f"every checked input has a similar training example ({words_text}).",
            )
        )
    return findings


SENSITIVE_FINDINGS = {
    "private_key": (
        "private_keys",
        "error",
        "private keys",
        "Remove them and rotate the keys: a model can reproduce training text verbatim.",
    ),
    "api_key": (
        "api_keys",
        "error",
        "API keys or access tokens",
        "Remove them and revoke the keys: a model can reproduce training text verbatim.",
    ),
    "email": (
        "emails",
        "warning",
        "e-mail addresses",
        "Replace them with placeholders unless the model should learn them.",
    ),
    "phone_number": ("phone_numbers", "warning", "phone numbers", "Replace them with placeholders."),
    "card_number": ("card_numbers", "warning", "payment card numbers (Luhn-valid)", "Remove or mask them."),
}


def _sensitive_findings(train: SplitScan, eval: SplitScan) -> list[dict[str, Any]]:
    findings = []
    for kind, (id_, severity, title, fix) in SENSITIVE_FINDINGS.items():
        problems = _merged([train, eval], kind)
        if problems.count:
            shown = ", ".join(
                f"{value} at {where}" for value, where in zip(problems.notes, problems.examples, strict=False)
            )
            findings.append(
                finding(
                    id_,
                    severity,
                    title,
                    problems.count,
                    problems.examples,
                    f"{problems.count} found (masked: {shown}). {fix}",
                )
            )
    return findings


# ---------------------------------------------------------------------------------------------
# --fix


def write_fixed(result: CheckResult, out_dir: str | Path) -> dict[str, Any]:
    """A cleaned copy (JSONL per split) and removed.jsonl saying what went and why; inputs untouched."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"removed": 0}
    with open(out / "removed.jsonl", "w", encoding="utf-8") as removed_file:
        for split, spec in result.specs.items():
            if spec is None:
                continue
            removals = result.scans[split].removed
            kept = removed = 0
            policy = ErrorPolicy(on_error="skip", max_skipped=10**12)
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                for row, source in iter_rows(spec, policy, f"data.{split}"):
                    reason = removals.get((source.path, source.line or -1))
                    if reason is None:
                        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                        kept += 1
                        continue
                    removed += 1
                    removed_file.write(
                        json.dumps(
                            {"split": split, "source": str(source), "reason": reason}, ensure_ascii=False
                        )
                        + "\n"
                    )
            for message in policy.skipped:
                removed += 1
                removed_file.write(
                    json.dumps(
                        {
                            "split": split,
                            "source": _source_of_message(message),
                            "reason": "unreadable: " + message,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            summary[split] = {"kept": kept, "removed": removed, "path": str(out / f"{split}.jsonl")}
            summary["removed"] += removed
    summary["removed_list"] = str(out / "removed.jsonl")
    return summary


# ---------------------------------------------------------------------------------------------
# Entry points: the CLI command and the pre-flight before training


def detect_task(spec: Any) -> str:
    """labeled rows -> classify, plain text -> pretrain, anything else -> instruct."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files = expand_paths(specs[0], ROW_SUFFIXES | TEXT_SUFFIXES)
    if files[0].suffix.lower() in TEXT_SUFFIXES:
        return "pretrain"
    for row, _ in iter_rows(str(files[0]), ErrorPolicy(on_error="skip", max_skipped=10**12)):
        keys = set(row)
        if "label" in keys or "labels" in keys:
            return "classify"
        if keys & {"messages", "conversations", "instruction", "prompt"}:
            return "instruct"
        if "text" in keys:
            return "pretrain"
        return "instruct"
    return "instruct"


def run_check(
    data: Any,
    eval: Any = None,
    target: str | None = None,
    task: str | None = None,
    model: str = "embedded",
    max_seq_len: int = 512,
    near_duplicate_threshold: float = 0.8,
    fix: str | None = None,
) -> tuple[CheckResult, dict[str, Any] | None]:
    """What `tunesmith data check` does: tokenizer only (never model weights), check, optional fix."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_tokenizer, resolve_model_path

    if not 0 < near_duplicate_threshold < 1:
        raise UserError(f"--near-dup-threshold must be between 0 and 1 (got {near_duplicate_threshold})")
    task = task or detect_task(data)
    tokenizer = load_tokenizer(resolve_model_path(model), ModelConfig(name=model))
    options = CheckOptions(
        task=task, max_seq_len=max_seq_len, near_duplicate_threshold=near_duplicate_threshold
    )
    result = check_data(data, eval, target, options, tokenizer)
    result.report["stats"]["model"] = model
    fixed = write_fixed(result, fix) if fix else None
    return result, fixed


def preflight(config: Any, prepared: Any, console: Any = None) -> dict[str, Any]:
    """The doctor before training: errors raise (before the model loads), warnings are printed."""
    data = config.data
    held_out = set()
    if data.eval is None:  # the held-out records came out of train: check them as the eval split
        held_out = {str(r.source) for r in prepared.eval_records if getattr(r, "source", None) is not None}
    options = CheckOptions(
        task=config.task,
        max_seq_len=data.max_seq_len,
        data_format=data.format,
        fields=dict(data.fields),
        system_prompt=data.system_prompt,
        label_columns=data.label_columns,
        # Rows that fail to parse were already skipped by data.on_error: skip (or stopped the run).
        format_severity="warning" if data.on_error == "skip" else "error",
        leakage_severity="error" if data.eval is not None else "warning",
    )
    result = check_data(
        data.train, data.eval, None, options, tokenizer=None, held_out=held_out, prepared=prepared
    )
    report = result.report
    blocking = [f for f in report["findings"] if f["severity"] == "error"]
    if blocking:
        listed = "; ".join(
            f"{f['title']} ({f['count']}{', e.g. ' + ', '.join(f['examples'][:3]) if f['examples'] else ''})"
            for f in blocking
        )
        raise UserError(
            f"data check: not ready to train: {listed}. Run `tunesmith data check` for details and --fix to write "
            "a cleaned copy, or set data.check: false to train anyway"
        )
    if console is not None:
        for item in report["findings"]:
            if item["severity"] == "warning":
                where = f" (e.g. {', '.join(item['examples'][:2])})" if item["examples"] else ""
                console.print(
                    f"[yellow]data warning[/yellow]: {item['title']}: {item['count']}{where}", soft_wrap=True
                )
    return report


def render_html(report: dict[str, Any]) -> str:
    """The findings as an HTML section (self-contained, every value escaped)."""
    colors = {"error": "#b00020", "warning": "#a86500", "info": "#555"}
    rows = "".join(
        f"<tr><td style='color:{colors[f['severity']]}'>{html.escape(f['severity'])}</td>"
        f"<td>{html.escape(f['title'])}</td><td>{f['count']}</td>"
        f"<td>{'<br>'.join(html.escape(e) for e in f['examples'])}</td><td>{html.escape(f['detail'])}</td></tr>"
        for f in report["findings"]
    )
    return (
        f"<section id='data-check'><h2>Data check: {html.escape(report['verdict'])}</h2>"
        f"<p>task {html.escape(report['task'])}, {report['stats'].get('num_train', 0)} train / "
        f"{report['stats'].get('num_eval', 0)} eval records</p>"
        "<table><tr><th>severity</th><th>finding</th><th>count</th><th>where</th><th>detail</th></tr>"
        f"{rows}</table></section>"
    )
