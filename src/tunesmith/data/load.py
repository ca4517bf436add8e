"""Reading data: files (JSONL/JSON/CSV/TSV/Parquet/text), folders, globs and hub datasets.

Everything yields plain rows (dicts) with the place they came from, so every later error can
name `file:line`. Nothing here knows about tasks or formats.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

ROW_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".ndjson"}
TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst"}
MAX_LINE_BYTES = 64 * 1024 * 1024  # a single line beyond this is a broken file, not a record


@dataclass(frozen=True)
class Source:
    """Where a record came from: file and 1-based line (or row) number."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


@dataclass
class ErrorPolicy:
    """What to do with a bad record: raise at once, or skip and count (up to a cap)."""

    on_error: str = "raise"
    max_skipped: int = 100
    skipped: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        if self.on_error != "skip":
            raise UserError(message + " (or set data.on_error: skip to drop bad records)")
        self.skipped.append(message)
        if len(self.skipped) > self.max_skipped:
            raise UserError(
                f"more than data.max_skipped={self.max_skipped} bad records; first: {self.skipped[0]}"
            )


def is_sources(spec: Any) -> bool:
    """Whether a data spec is data.train's sources (objects with a `path`), not paths."""
    return isinstance(spec, list) and any(hasattr(item, "path") for item in spec)


def spec_paths(spec: Any) -> list[str]:
    """Every path a data spec names: a path, a list of paths, or data.train's sources (objects or
    {path: ...} dicts, each path one or several)."""
    if spec is None:
        return []
    paths: list[str] = []
    for item in spec if isinstance(spec, (list, tuple)) else [spec]:
        path = item["path"] if isinstance(item, dict) else getattr(item, "path", item)
        paths += [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
    return paths


def looks_like_hub_id(spec: str) -> bool:
    return (
        not os.path.exists(spec)
        and not any(ch in spec for ch in "*?[")
        and spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and Path(spec).suffix.lower() not in ROW_SUFFIXES | TEXT_SUFFIXES
    )


def expand_paths(spec: str | list[str], suffixes: set[str], what: str = "data") -> list[Path]:
    """Files named by paths, folders (recursively) and globs, in a stable order."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: list[Path] = []
    for item in specs:
        item = os.path.expanduser(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found = [p for p in matches if p.is_file()]
            if not found:
                raise UserError(f"{what}: the pattern {item!r} matches no file; check the path")
            files.extend(found)
        elif os.path.isdir(item):
            found = sorted(p for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                kinds = ", ".join(sorted(suffixes))
                raise UserError(f"{what}: the folder {item} holds no data file ({kinds})")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(Path(item))
        else:
            raise UserError(
                f"{what}: file {item} not found; check the path (relative paths start at the current folder)"
            )
    return files


def _check_not_binary(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if b"\x00" in head and not path.suffix.lower() == ".parquet":
        raise UserError(f"{path}: looks like a binary file (NUL bytes), not {path.suffix or 'text'} data")


def _read_lines(handle: Any, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, length) of a binary file; a line over `limit` bytes comes back as (None, length),
    read in pieces and never held in memory whole."""
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        length = len(raw)
        while raw and not raw.endswith(b"\n"):
            raw = handle.readline(1 << 20)
            length += len(raw)
        yield None, length


def _iter_jsonl(path: Path, policy: ErrorPolicy) -> Iterator[tuple[dict[str, Any], Source]]:
    with open(path, "rb") as handle:
        for number, (raw, length) in enumerate(_read_lines(handle, MAX_LINE_BYTES), start=1):
            source = Source(str(path), number)
            if raw is None or length > MAX_LINE_BYTES:
                policy.bad(
                    f"{source}: line is {length:,} bytes long (limit {MAX_LINE_BYTES:,}); is this really JSONL?"
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                policy.bad(
                    f"{source}: not valid UTF-8 at byte {exc.start} of the line; re-save the file as UTF-8"
                )
                continue
            row = parse_json_line(line, source, policy)
            if row is not None:
                yield row, source


def parse_json_line(line: str, source: Source, policy: ErrorPolicy) -> dict[str, Any] | None:
    """One JSON Lines record; None for a blank line or a bad one (reported through `policy`)."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        policy.bad(f"{source}: malformed JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
        return None
    if not isinstance(row, dict):
        policy.bad(f"{source}: expected a JSON object per line, got {type(row).__name__}")
        return None
    return row


def _iter_json(path: Path, policy: ErrorPolicy) -> Iterator[tuple[dict[str, Any], Source]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Extra data"):
            # A .json file that is really JSON Lines.
            yield from _iter_jsonl(path, policy)
            return
        raise UserError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):
        # {"data": [...]} or {"train": [...]} wrappers are common; take the single list inside.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects")
    for index, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            policy.bad(f"{path}:item {index}: expected a JSON object, got {type(row).__name__}")
            continue
        yield row, Source(str(path), index)


def _iter_csv(path: Path, policy: ErrorPolicy, delimiter: str) -> Iterator[tuple[dict[str, Any], Source]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        return
    for row in reader:
        # line_num is the physical line where the record ended (handles quoted newlines).
        source = Source(str(path), reader.line_num)
        if None in row:
            policy.bad(f"{source}: more fields than the header has; check quoting or the delimiter")
            continue
        yield {k: v for k, v in row.items() if k is not None}, source


def _iter_parquet(path: Path) -> Iterator[tuple[dict[str, Any], Source]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield row, Source(str(path), number)


def iter_file_rows(path: Path, policy: ErrorPolicy) -> Iterator[tuple[dict[str, Any], Source]]:
    suffix = path.suffix.lower()
    if suffix != ".parquet":
        _check_not_binary(path)
    if suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path, policy)
    elif suffix == ".json":
        yield from _iter_json(path, policy)
    elif suffix == ".csv":
        yield from _iter_csv(path, policy, ",")
    elif suffix == ".tsv":
        yield from _iter_csv(path, policy, "\t")
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix in TEXT_SUFFIXES:
        text, problems = read_text_file(path)
        for problem in problems:
            policy.bad(problem)
        yield {"text": text}, Source(str(path))
    else:
        raise UserError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .csv, .tsv, .parquet, .txt or .md"
        )


def read_text_file(path: Path) -> tuple[str, list[str]]:
    """Decode a text file as UTF-8; undecodable bytes are replaced and reported with their offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        count = data.decode("utf-8", errors="replace").count("\ufffd")
        problem = (
            f"{path}: {count} undecodable byte(s), first at byte offset {exc.start}; replaced with U+FFFD"
        )
        return data.decode("utf-8", errors="replace"), [problem]


def iter_hub_rows(
    name: str, split: str = "train", token: str | None = None
) -> Iterator[tuple[dict[str, Any], Source]]:
    """Rows of a Hugging Face hub dataset (needs `datasets` and network access)."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{name!r} is not a local file; to read hub datasets install the extra: pip install 'tunesmith[hub]'"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split=split, token=token)
    except Exception as exc:
        raise UserError(
            f"{name!r}: not a local file, and loading it from the Hugging Face hub failed "
            f"({type(exc).__name__}); check the path or your network"
        ) from None
    for index, row in enumerate(dataset, start=1):
        yield dict(row), Source(f"hub:{name}[{split}]", index)


def iter_rows(
    spec: str | list[str], policy: ErrorPolicy | None = None, what: str = "data"
) -> Iterator[tuple[dict[str, Any], Source]]:
    """Every row of every file named by `spec` (paths, folders, globs or one hub dataset id)."""
    policy = policy or ErrorPolicy()
    specs = [spec] if isinstance(spec, str) else list(spec)
    for item in specs:
        if looks_like_hub_id(item):
            name, _, split = item.partition(":")
            yield from iter_hub_rows(name, split or "train")
            continue
        for path in expand_paths(item, ROW_SUFFIXES | TEXT_SUFFIXES, what):
            yield from iter_file_rows(path, policy)
