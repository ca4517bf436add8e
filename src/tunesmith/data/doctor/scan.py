"""Reading and scanning for the data doctor: one streaming pass per file, per-record facts in arrays.

Every row is read once (through `load.iter_rows` and `formats.to_record`, collecting problems
instead of stopping at the first), fingerprinted (exact hash, MinHash signature), token-counted
and scanned for sensitive content. `findings.py` turns what a `SplitScan` gathered into findings.
"""

from __future__ import annotations

import random
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tunesmith.data.doctor.detect as detect  # the module itself, never the package being initialised
from tunesmith.data.formats import (
    RECORD_KINDS,
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


@dataclass
class CheckOptions:
    """What to check. `records` (TextRecord, Conversation or LabeledText) decides which checks apply."""

    records: type = Conversation  # the canonical record every row must become
    task: str = ""  # the task the data is for, by name: shown in the report, never branched on
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


# ---------------------------------------------------------------------------------------------
# Reading and scanning


def source_of_message(message: str) -> str:
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
    measured once on a probe conversation. Exact counts come from the tokenized data at training time.
    """

    def __init__(self, tokenizer: Any, records: type, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.conversations = records is Conversation
        self.special_tokens = records is LabeledText  # a classifier reads [CLS]/[SEP] like tokens
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.base, self.per_message, self.header = 0.0, 4.0, 3.0
        if self.conversations:
            self._measure_template(chat_template)

    def lengths(self, texts: list[Any], special: bool = False) -> list[int]:
        """Token counts; a text over detect.SHINGLE_CHAR_LIMIT is estimated from its beginning (the
        tokenizer's per-token structures for a 50 MB text would take GBs)."""
        limit = detect.SHINGLE_CHAR_LIMIT
        sizes = [sum(map(len, t)) if isinstance(t, tuple) else len(t) for t in texts]
        if any(size > limit for size in sizes):
            heads = [(t[0][:limit], t[1][:limit]) if isinstance(t, tuple) else t[:limit] for t in texts]
            counted = self._lengths(heads, special)
            heads_size = [sum(map(len, h)) if isinstance(h, tuple) else len(h) for h in heads]
            return [
                round(n * size / max(head, 1)) if size > limit else n
                for n, size, head in zip(counted, sizes, heads_size, strict=True)
            ]
        return self._lengths(texts, special)

    def _lengths(self, texts: list[Any], special: bool = False) -> list[int]:
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
        if not self.conversations:
            texts = [
                (r.text, r.text_pair) if isinstance(r, LabeledText) and r.text_pair else r.text
                for r, _ in batch
            ]
            totals = self.lengths(texts, special=self.special_tokens)
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
                detected = detect_format(row, RECORD_KINDS[options.records], source)
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
        if len(whole) > detect.SHINGLE_CHAR_LIMIT:
            target.problems["huge_records"].add(location, f"{location}: {len(whole):,} characters")
        if "\ufffd" in whole or "Ã©" in whole or "â€" in whole:
            target.problems["mojibake"].add(location)
        for kind, masked in detect.find_sensitive(whole):
            target.problems[kind].add(location, masked)
        normalized = detect.normalize_text(whole)
        target.hashes.append(detect.exact_hash(normalized))
        if isinstance(record, LabeledText):
            label = record.label
            target.labels.append(tuple(sorted(map(str, label))) if isinstance(label, list) else str(label))
        if target.want_words:
            input_words = detect.words(inputs[: detect.SHINGLE_CHAR_LIMIT])
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
                location = source_of_message(message)
                owner.problems[_format_problem_id(message)].add(location, message)


def _flush(batch: list, options: CheckOptions, counter: TokenCounter | None) -> None:
    if not batch:
        return
    signatures = detect.minhash_signatures([item[4] for item in batch], options.num_perm)
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
