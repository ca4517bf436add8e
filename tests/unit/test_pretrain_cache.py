"""The pretraining token cache: reuse, invalidation, interrupted builds, decoding problems, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tunesmith.data import cache
from tunesmith.data.load import ErrorPolicy
from tunesmith.errors import UserError

from ..conftest import ASSETS, write_jsonl

WORDS = [
    "the",
    "river",
    "keeps",
    "its",
    "old",
    "course",
    "through",
    "the",
    "valley",
    "while",
    "the",
    "mill",
    "wheel",
    "turns",
    "slowly",
]


def make_text(seed: int, num_words: int = 200) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for start in range(0, num_words, 12):
        lines.append(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), min(12, num_words - start))))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS / "base-model")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index in range(4):
        (folder / f"doc{index}.txt").write_text(make_text(index), encoding="utf-8")
    (folder / "notes.md").write_text("# Notes\n\n" + make_text(9), encoding="utf-8")
    return folder


def count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the batch encoder; the list holds the number of texts of each call."""
    calls: list[int] = []
    real = cache.encoder_for

    def spying_encoder_for(tokenizer):
        encode = real(tokenizer)

        def spy(texts):
            calls.append(len(texts))
            return encode(texts)

        return spy

    monkeypatch.setattr(cache, "encoder_for", spying_encoder_for)
    return calls


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_documents_hold_their_tokens_and_end_with_eos(corpus, tokenizer, tmp_path):
    entry = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    files = sorted(corpus.iterdir())
    assert entry.num_documents == len(files)
    for index, path in enumerate(files):
        expected = tokenizer(path.read_text(), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        assert entry.document(index).tolist() == expected
        assert entry.source_of(index) == str(path)
    assert entry.tokens.dtype == np.uint16  # 2,928-token vocabulary


def test_second_run_reuses_the_cache_without_tokenizing(corpus, tokenizer, tmp_path, monkeypatch):
    calls = count_encodes(monkeypatch)
    first = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    assert calls and not first.reused
    calls.clear()
    second = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    assert calls == [] and second.reused and second.path == first.path
    assert np.array_equal(np.asarray(second.tokens), np.asarray(first.tokens))


def test_a_changed_file_invalidates_the_cache(corpus, tokenizer, tmp_path, monkeypatch):
    first = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    target = corpus / "doc2.txt"
    stat = target.stat()
    # Same size and the same mtime: only the content differs.
    target.write_text(target.read_text().replace("river", "RIVER"), encoding="utf-8")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls = count_encodes(monkeypatch)
    second = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    assert calls and not second.reused and second.path != first.path
    assert "RIVER" in tokenizer.decode(second.document(2).tolist())
    # An added file is a change too.
    (corpus / "doc9.txt").write_text("one more document\n")
    third = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    assert not third.reused and third.num_documents == first.num_documents + 1


def test_a_changed_tokenizer_invalidates_the_cache(corpus, tokenizer, tmp_path, monkeypatch):
    first = cache.load_or_build(str(corpus), tokenizer, tmp_path / "cache")
    changed = AutoTokenizer.from_pretrained(ASSETS / "base-model")
    changed.add_tokens(["river keeps"])
    calls = count_encodes(monkeypatch)
    second = cache.load_or_build(str(corpus), changed, tmp_path / "cache")
    assert calls and not second.reused and second.path != first.path
    new_id = changed.convert_tokens_to_ids("river keeps")
    assert new_id in np.asarray(second.tokens) and new_id not in np.asarray(first.tokens)


def test_an_exception_mid_build_leaves_nothing_a_later_run_would_trust(
    corpus, tokenizer, tmp_path, monkeypatch
):
    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(cache, "BATCH_CHARS", 500)  # several batches, so the failure is mid-build
    real = cache.encoder_for

    def failing_encoder_for(tok):
        encode = real(tok)
        calls = []

        def fail_on_second(texts):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C
            return encode(texts)

        return fail_on_second

    monkeypatch.setattr(cache, "encoder_for", failing_encoder_for)
    with pytest.raises(KeyboardInterrupt):
        cache.load_or_build(str(corpus), tokenizer, cache_dir)
    assert entries(cache_dir) == []  # neither an entry nor a leftover temporary folder
    monkeypatch.setattr(cache, "encoder_for", real)
    rebuilt = cache.load_or_build(str(corpus), tokenizer, cache_dir)
    assert not rebuilt.reused and rebuilt.num_documents == 5
    clean = cache.load_or_build(str(corpus), tokenizer, tmp_path / "clean")
    assert np.array_equal(np.asarray(rebuilt.tokens), np.asarray(clean.tokens))


def test_a_killed_build_leaves_nothing_a_later_run_would_trust(corpus, tokenizer, tmp_path):
    """SIGKILL-like death (os._exit) mid-build: no cleanup code runs, and still nothing is trusted."""
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os
        from transformers import AutoTokenizer
        from tunesmith.data import cache
        cache.BATCH_CHARS = 500
        real = cache.encoder_for
        def dying(tok):
            encode, calls = real(tok), []
            def run(texts):
                calls.append(1)
                if len(calls) == 3:
                    os._exit(9)
                return encode(texts)
            return run
        cache.encoder_for = dying
        cache.load_or_build({str(corpus)!r}, AutoTokenizer.from_pretrained({str(ASSETS / "base-model")!r}),
                            {str(cache_dir)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    leftovers = entries(cache_dir)
    assert len(leftovers) == 1 and cache.PARTIAL_MARK in leftovers[0]  # the dead build's temporary folder
    key = leftovers[0].split(cache.PARTIAL_MARK)[0]
    assert cache.open_entry(cache_dir / leftovers[0]) is None
    # A half-written entry under the final name (a non-atomic writer) is not trusted either.
    fake = cache_dir / key
    fake.mkdir()
    (fake / cache.TOKENS_FILE).write_bytes(b"\x01\x00" * 10)
    (fake / cache.META_FILE).write_text(
        json.dumps(
            {
                "version": cache.CACHE_FORMAT_VERSION,
                "complete": True,
                "dtype": "uint16",
                "num_tokens": 99,
                "num_documents": 1,
            }
        )
    )
    assert cache.open_entry(fake) is None
    rebuilt = cache.load_or_build(str(corpus), tokenizer, cache_dir)
    assert not rebuilt.reused and rebuilt.path == fake and rebuilt.num_documents == 5
    assert entries(cache_dir) == [key]  # the dead build's folder was cleaned up


def test_large_text_files_are_read_in_pieces_with_the_same_tokens(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("".join(make_text(seed, 120) + "\n" for seed in range(40)), encoding="utf-8")
    whole = cache.load_or_build(str(path), tokenizer, tmp_path / "whole")
    monkeypatch.setattr(cache, "TEXT_CHUNK_BYTES", 1000)
    pieces = list(cache.iter_text_file(path, []))
    assert len(pieces) > 10 and "".join(pieces) == path.read_text()
    monkeypatch.setattr(cache, "BATCH_CHARS", 3000)
    chunked = cache.load_or_build(str(path), tokenizer, tmp_path / "chunked")
    assert chunked.num_documents == 1
    assert np.array_equal(np.asarray(chunked.tokens), np.asarray(whole.tokens))


def test_undecodable_bytes_are_reported_with_file_and_offset_not_fatal(tokenizer, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_utf8.txt").write_text("caf\u00e9 au lait\n", encoding="utf-8")
    latin = ("x" * 3000 + "\n") * 3 + "caf\u00e9 cr\u00e8me\n"
    (folder / "b_latin1.txt").write_bytes(latin.encode("latin-1"))
    (folder / "c_utf16.txt").write_text("hello from utf-16\n", encoding="utf-16")
    write_jsonl(folder / "d.jsonl", [{"text": "first record"}])
    with open(folder / "d.jsonl", "ab") as handle:
        handle.write(b'{"text": "bad \xff byte"}\n')
    monkeypatch.setattr(cache, "TEXT_CHUNK_BYTES", 4000)  # the bad bytes sit in a later piece
    entry = cache.load_or_build(str(folder), tokenizer, tmp_path / "cache")
    assert entry.num_documents == 5
    text = " ".join(entry.warnings)
    offset = 3 * 3001 + 3  # "caf" then the Latin-1 byte for é
    assert f"b_latin1.txt: 2 undecodable byte(s), first at byte offset {offset}" in text
    assert "c_utf16.txt: decoded as UTF-16" in text
    assert "d.jsonl:2: 1 undecodable byte(s), first at byte offset" in text
    assert "\ufffd" in tokenizer.decode(entry.document(1).tolist())
    # The warnings are stored with the entry, so a reused cache reports them too.
    assert cache.load_or_build(str(folder), tokenizer, tmp_path / "cache").warnings == entry.warnings


def test_jsonl_and_parquet_text_fields(tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", [{"body": "alpha text"}, {"body": "beta text"}])
    pq.write_table(pa.table({"body": ["gamma text", "delta text"]}), tmp_path / "b.parquet")
    entry = cache.load_or_build(
        [str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")],
        tokenizer,
        tmp_path / "cache",
        fields={"text": "body"},
    )
    decoded = [tokenizer.decode(entry.document(i).tolist()) for i in range(entry.num_documents)]
    assert decoded == [f"{w} text<|endoftext|>" for w in ("alpha", "beta", "gamma", "delta")]
    with pytest.raises(UserError, match="a.jsonl:1"):
        cache.load_or_build(str(tmp_path / "a.jsonl"), tokenizer, tmp_path / "cache2")
    policy = ErrorPolicy("skip")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "fine"}, {"text": ""}, {"text": "also fine"}])
    entry = cache.load_or_build(str(tmp_path / "c.jsonl"), tokenizer, tmp_path / "cache", policy=policy)
    assert entry.num_documents == 2 and "c.jsonl:2" in policy.skipped[0]


def test_build_memory_does_not_grow_with_the_corpus(tokenizer, tmp_path):
    encode = cache.encoder_for(tokenizer)
    prefix, eos = cache.special_ids(tokenizer)

    def peak(num_documents: int) -> int:
        documents = ((make_text(i % 50, 40), True) for i in range(num_documents))
        folder = tmp_path / f"n{num_documents}"
        folder.mkdir()
        tracemalloc.start()
        cache.write_entry(folder, documents, encode, prefix, eos, np.dtype(np.uint16), batch_chars=20_000)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (folder / cache.OFFSETS_FILE).stat().st_size == 8 * (num_documents + 1)
        return top

    small, large = peak(1_000), peak(10_000)
    assert large < 1.5 * small, (small, large)
