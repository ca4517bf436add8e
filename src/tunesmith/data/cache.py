"""The token cache for continued pretraining: tokenise a corpus once, memory-map it afterwards.

One entry, `<cache_dir>/<key>/`:
    tokens.bin    every document's token ids back to back (uint16, or uint32 for vocabularies
                  over 65,536), each document starting with the tokenizer's own prefix (BOS, if
                  any) and ending with EOS
    offsets.bin   int64 start of every document in tokens.bin, then the end (num_documents + 1 values)
    meta.json     counts, dtype, the files and where their documents start, decoding problems

The key is a sha256 over the sources (path, size, mtime and a hash of the first and last MiB of
every file), the tokenizer (its serialized pipeline and a probe encoding), the field mapping and
the format version: a changed file or tokenizer gives a new entry. An entry is written into a
temporary folder beside it and renamed into place only when complete (fsynced), so a build that
is interrupted, even by SIGKILL, never leaves an entry that a later run would trust.

The build streams: text is read in chunks, encoded in batches by the fast tokenizer (Rust, on
every core) and appended to disk, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.formats import TextRecord, normalize
from tunesmith.data.load import (
    ROW_SUFFIXES,
    TEXT_SUFFIXES,
    ErrorPolicy,
    Source,
    expand_paths,
    iter_file_rows,
    iter_hub_rows,
    looks_like_hub_id,
    parse_json_line,
)
from tunesmith.errors import UserError
from tunesmith.progress import Progress

CACHE_FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
OFFSETS_FILE = "offsets.bin"
META_FILE = "meta.json"
PARTIAL_MARK = ".partial-"  # temporary build folders: <key>.partial-<pid>-<random>
TEXT_CHUNK_BYTES = 256 * 1024  # a text file is read and encoded in pieces of about this size
BATCH_CHARS = 2 * 1024 * 1024  # characters per encode_batch call: work for every core, ~100 MB of encodings
FINGERPRINT_BYTES = 1024 * 1024  # head and tail of each file hashed into the key
PROBE_TEXT = "Tunesmith probe: naïve café — 3.14 ü\n\tDone.  "


def default_cache_dir() -> Path:
    return Path("~/.cache/tunesmith").expanduser()


# --------------------------------------------------------------------------------------------
# Reading documents


@dataclass
class DecodeReport:
    """Undecodable bytes of one file: how many, and the byte offset of the first."""

    path: str
    count: int = 0
    first_offset: int | None = None
    first_line: int | None = None

    def message(self) -> str:
        where = f"{self.path}:{self.first_line}" if self.first_line is not None else self.path
        return (
            f"{where}: {self.count} undecodable byte(s), first at byte offset {self.first_offset}; replaced with "
            "U+FFFD (is the file in another encoding, e.g. Latin-1? re-save it as UTF-8)"
        )


def _decode(data: bytes, base_offset: int, report: DecodeReport, line: int | None = None) -> str:
    """UTF-8 with undecodable bytes replaced, counted and located (offset within the file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    pieces = []
    position = 0
    while position < len(data):
        try:
            pieces.append(data[position:].decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            pieces.append(data[position : position + exc.start].decode("utf-8"))
            if report.first_offset is None:
                report.first_offset = base_offset + position + exc.start
                report.first_line = line
            report.count += exc.end - exc.start
            pieces.append("\ufffd")
            position += exc.end
    return "".join(pieces)


def _safe_cut(data: bytes) -> int:
    """Where to end a text chunk: after a newline that a non-space follows, so whitespace runs
    (which tokenizers merge into one token) are never split; else at a UTF-8 character start."""
    search_end = len(data)
    for _ in range(1000):
        newline = data.rfind(b"\n", 0, search_end)
        if newline < 0 or newline + 1 >= len(data):
            break
        if data[newline + 1 : newline + 2] not in (b" ", b"\t", b"\r", b"\n"):
            return newline + 1
        search_end = newline
    cut = len(data)
    while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:  # inside a multi-byte character
        cut -= 1
    if cut > 0 and data[cut - 1] >= 0xC0:  # a lead byte whose character may be incomplete
        cut -= 1
    return cut or len(data)


def iter_text_file(
    path: Path,
    warnings: list[str],
    advance: Callable[[int], None] | None = None,
    chunk_bytes: int | None = None,
) -> Iterator[str]:
    """A text file in pieces of about `chunk_bytes`; the whole file is one document."""
    advance = advance or (lambda num_bytes: None)
    chunk_bytes = chunk_bytes or TEXT_CHUNK_BYTES
    with open(path, "rb") as handle:
        head = handle.read(8192)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            # UTF-16 cannot be cut at newline bytes; such files are small in practice.
            data = head + handle.read()
            warnings.append(f"{path}: decoded as UTF-16 (byte order mark); UTF-8 is the expected encoding")
            advance(len(data))
            yield data.decode("utf-16", errors="replace")
            return
        if b"\x00" in head:
            warnings.append(f"{path}: looks like a binary file (NUL bytes in the first 8 KiB); skipped")
            return
        report = DecodeReport(str(path))
        position = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0  # file offset of carry[0]
        carry = head[position:]
        advance(position)
        while True:
            block = handle.read(chunk_bytes)
            data = carry + block
            if block and len(data) < chunk_bytes:
                carry = data
                continue
            if not data:
                break
            # The last piece of the file is taken whole; others end at a safe place.
            cut = _safe_cut(data) if block else len(data)
            advance(cut)
            yield _decode(data[:cut], position, report)
            position += cut
            carry = data[cut:]
    if report.count:
        warnings.append(report.message())


def _iter_jsonl_text(
    path: Path, policy: ErrorPolicy, warnings: list[str], advance: Callable[[int], None]
) -> Iterator[tuple[dict[str, Any], Source]]:
    """JSON Lines where a bad byte is replaced and reported (file:line, byte offset), not fatal."""
    report = DecodeReport(str(path))
    offset = 0
    with open(path, "rb") as handle:
        if b"\x00" in handle.read(8192):
            raise UserError(f"{path}: looks like a binary file (NUL bytes), not JSON Lines")
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            source = Source(str(path), number)
            line = _decode(raw, offset, report, number)
            offset += len(raw)
            advance(len(raw))
            row = parse_json_line(line, source, policy)
            if row is not None:
                yield row, source
    if report.count:
        warnings.append(report.message())


@dataclass
class CorpusSource:
    """One file or hub dataset of a corpus, with what the cache key needs to know about it."""

    kind: str  # "text", "rows" or "hub"
    name: str  # file path or hub id[:split]
    size: int = 0

    def fingerprint(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"hub": self.name}
        path = Path(self.name)
        stat = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            if stat.st_size > 2 * FINGERPRINT_BYTES:
                handle.seek(-FINGERPRINT_BYTES, os.SEEK_END)
                digest.update(handle.read())
        return {
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sample_sha256": digest.hexdigest(),
        }


def corpus_sources(spec: str | list[str], what: str) -> list[CorpusSource]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    sources = []
    for item in specs:
        if looks_like_hub_id(item.partition(":")[0]):
            sources.append(CorpusSource("hub", item))
            continue
        for path in expand_paths(item, ROW_SUFFIXES | TEXT_SUFFIXES, what):
            kind = "text" if path.suffix.lower() in TEXT_SUFFIXES else "rows"
            if kind == "rows" and path.suffix.lower() not in ROW_SUFFIXES:
                raise UserError(
                    f"{what}: {path} has an unsupported file type; use .txt/.md text, or .jsonl/.json/.csv/.parquet "
                    "with a `text` field"
                )
            sources.append(CorpusSource(kind, str(path), path.stat().st_size))
    return sources


def iter_documents(
    source: CorpusSource,
    fmt: str,
    fields: dict[str, str],
    policy: ErrorPolicy,
    warnings: list[str],
    advance: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, bool]]:
    """(text piece, ends a document) for every document of one source; `advance(bytes read)`."""
    advance = advance or (lambda num_bytes: None)
    path = Path(source.name)
    if source.kind == "text":
        pieces = iter_text_file(path, warnings, advance)
        # Look one piece ahead to know which piece is the file's last.
        previous = next(pieces, None)
        if previous is None:
            warnings.append(f"{path}: empty; skipped")
            return
        for piece in pieces:
            yield previous, False
            previous = piece
        yield previous, True
        return
    if source.kind == "hub":
        name, _, split = source.name.partition(":")
        rows: Iterator[tuple[dict[str, Any], Source]] = iter_hub_rows(name, split or "train")
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _iter_jsonl_text(path, policy, warnings, advance)
    else:
        rows = iter_file_rows(path, policy)
    for record in normalize(rows, "text", fmt, fields, None, policy):
        assert isinstance(record, TextRecord)  # the "text" kind gives TextRecords only
        yield record.text, True
    if source.kind == "rows" and path.suffix.lower() not in (".jsonl", ".ndjson"):
        advance(source.size)


# --------------------------------------------------------------------------------------------
# Tokenizing


def encoder_for(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoding without special tokens: the Rust tokenizer directly when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # encode_batch_fast skips the character offsets that nobody here needs.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def special_ids(tokenizer: Any) -> tuple[list[int], int]:
    """The ids the tokenizer puts before a text (e.g. BOS) and the EOS id ending each document."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(
            "model.name: the tokenizer has no EOS token, which continued pretraining puts between documents; "
            "use a tokenizer with an eos_token"
        )
    prefix = list(tokenizer("", add_special_tokens=True)["input_ids"])
    while prefix and prefix[-1] == eos:
        prefix.pop()
    return prefix, int(eos)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    prefix, eos = special_ids(tokenizer)
    probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    digest.update(json.dumps([type(tokenizer).__name__, len(tokenizer), prefix, eos, probe]).encode("utf-8"))
    return digest.hexdigest()


def cache_key(sources: list[CorpusSource], tokenizer: Any, fmt: str, fields: dict[str, str]) -> str:
    description = {
        "version": CACHE_FORMAT_VERSION,
        "sources": [s.fingerprint() for s in sources],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "format": fmt,
        "fields": sorted(fields.items()),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# The cache entry


@dataclass
class TokenCache:
    """A complete cache entry, memory-mapped: documents are `tokens[offsets[i]:offsets[i+1]]`."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    meta: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    def source_of(self, document: int) -> str:
        files = self.meta["files"]
        for item in reversed(files):
            if item["first_document"] <= document:
                return item["name"]
        return "?"


def open_entry(path: Path) -> TokenCache | None:
    """The entry at `path` if it is complete and consistent, else None (never a partial one)."""
    meta_file = path / META_FILE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_FORMAT_VERSION or not meta.get("complete"):
        return None
    dtype = np.dtype(meta["dtype"])
    tokens_file, offsets_file = path / TOKENS_FILE, path / OFFSETS_FILE
    try:
        tokens_size, offsets_size = tokens_file.stat().st_size, offsets_file.stat().st_size
    except OSError:
        return None
    if tokens_size != meta["num_tokens"] * dtype.itemsize or offsets_size != (meta["num_documents"] + 1) * 8:
        return None
    # An empty file cannot be memory-mapped; an entry with no tokens is a plain empty array.
    tokens = np.memmap(tokens_file, dtype=dtype, mode="r") if tokens_size else np.zeros(0, dtype)
    offsets = np.fromfile(offsets_file, dtype=np.int64)
    return TokenCache(path, tokens, offsets, meta, warnings=list(meta.get("warnings", [])))


def _remove_stale_partials(cache_dir: Path, key: str) -> None:
    """Temporary folders of builds whose process is gone (killed mid-build)."""
    for partial in cache_dir.glob(f"{key}{PARTIAL_MARK}*"):
        try:
            pid = int(partial.name[len(key) + len(PARTIAL_MARK) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_entry(
    directory: Path,
    documents: Iterator[tuple[str, bool]],
    encode: Callable[[list[str]], list[list[int]]],
    prefix: list[int],
    eos: int,
    dtype: np.dtype,
    batch_chars: int | None = None,
) -> tuple[int, int]:
    """Encode (text piece, ends a document) items in batches and append them to the files
    in `directory`; returns (num_documents, num_tokens). Memory: one batch at a time."""
    batch_chars = batch_chars or BATCH_CHARS
    num_documents = num_tokens = 0
    starts_document = True  # the next piece begins a new document
    with (
        open(directory / TOKENS_FILE, "wb") as tokens_out,
        open(directory / OFFSETS_FILE, "wb") as offsets_out,
    ):
        offsets_out.write(np.zeros(1, np.int64).tobytes())

        def flush(batch: list[tuple[str, bool, bool]]) -> None:
            nonlocal num_documents, num_tokens
            encoded = encode([text for text, _, _ in batch])
            pieces: list[list[int]] = []
            ends: list[int] = []
            for (_, first, last), ids in zip(batch, encoded, strict=True):
                if first and prefix:
                    pieces.append(prefix)
                    num_tokens += len(prefix)
                pieces.append(ids)
                num_tokens += len(ids)
                if last:
                    pieces.append([eos])
                    num_tokens += 1
                    ends.append(num_tokens)
            count = sum(len(p) for p in pieces)
            tokens_out.write(
                np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype, count=count).tobytes()
            )
            offsets_out.write(np.asarray(ends, dtype=np.int64).tobytes())
            num_documents += len(ends)

        batch: list[tuple[str, bool, bool]] = []
        batch_size = 0
        for text, ends_document in documents:
            batch.append((text, starts_document, ends_document))
            starts_document = ends_document
            batch_size += len(text)
            if batch_size >= batch_chars:
                flush(batch)
                batch, batch_size = [], 0
        if batch:
            flush(batch)
    return num_documents, num_tokens


def load_or_build(
    spec: str | list[str],
    tokenizer: Any,
    cache_dir: str | Path | None = None,
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    policy: ErrorPolicy | None = None,
    what: str = "data.train",
    progress: Progress | None = None,
) -> TokenCache:
    """The cache entry for this corpus and tokenizer: reused when complete, else built now."""
    started = time.perf_counter()
    fields = dict(fields or {})
    policy = policy or ErrorPolicy()
    fmt = "auto" if fmt in ("auto", "text") else fmt
    if fmt != "auto":
        raise UserError(f"config key `data.format`: {fmt!r} does not fit task 'pretrain'; use text (or auto)")
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    sources = corpus_sources(spec, what)
    key = cache_key(sources, tokenizer, fmt, fields)
    final = cache_dir / key
    entry = open_entry(final)
    if entry is not None:
        entry.reused = True
        entry.seconds = time.perf_counter() - started
        return entry

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"config key `data.cache_dir`: cannot create {cache_dir} ({exc.strerror}); choose another folder"
        ) from None
    _remove_stale_partials(cache_dir, key)
    if final.exists():  # incomplete or from an older format: never trusted, rebuilt
        shutil.rmtree(final, ignore_errors=True)
    partial = cache_dir / f"{key}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    warnings: list[str] = []
    prefix, eos = special_ids(tokenizer)
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)
    files: list[dict[str, Any]] = []
    try:
        partial.mkdir()
        with _build_progress(progress, sum(s.size for s in sources), what) as advance:
            document_count = [0]

            def all_documents() -> Iterator[tuple[str, bool]]:
                for source in sources:
                    files.append({"name": source.name, "first_document": document_count[0]})
                    for text, ends in iter_documents(source, fmt, fields, policy, warnings, advance):
                        document_count[0] += ends
                        yield text, ends

            num_documents, num_tokens = write_entry(
                partial, all_documents(), encoder_for(tokenizer), prefix, eos, dtype
            )
        if num_documents == 0:
            shown = spec if isinstance(spec, str) else ", ".join(spec)
            raise UserError(f"{what}: no text found in {shown}; the corpus is empty")
        meta = {
            "version": CACHE_FORMAT_VERSION,
            "complete": True,
            "dtype": dtype.name,
            "num_documents": num_documents,
            "num_tokens": num_tokens,
            "eos_id": eos,
            "prefix_ids": prefix,
            "files": files,
            "warnings": warnings,
            "skipped_records": list(policy.skipped),
            "spec": spec,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _fsync(partial / TOKENS_FILE)
        _fsync(partial / OFFSETS_FILE)
        (partial / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _fsync(partial / META_FILE)
        try:
            partial.rename(final)
        except OSError:
            # Another process finished the same entry first; theirs is as good as ours.
            if open_entry(final) is None:
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"disk full while writing the token cache in {cache_dir}: "
                f"{shutil.disk_usage(cache_dir).free / 2**20:.1f} MiB free once the partial entry was removed; "
                "free space or point data.cache_dir elsewhere"
            ) from None
        raise
    entry = open_entry(final)
    assert entry is not None, f"cache entry {final} unreadable right after it was written"
    entry.seconds = time.perf_counter() - started
    return entry


@contextmanager
def _build_progress(
    progress: Progress | None, total_bytes: int, what: str
) -> Iterator[Callable[[int], None]]:
    """Reports the corpus bytes tokenized so far to `progress` (nothing when there is none)."""
    if progress is None:
        yield lambda num_bytes: None
        return
    done = 0

    def advance(num_bytes: int) -> None:
        nonlocal done
        done += num_bytes
        progress.step(done, {})

    progress.start(total_bytes, 0, f"tokenizing {what}")
    try:
        yield advance
    finally:
        progress.close()
