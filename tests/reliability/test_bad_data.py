"""Bad data fails before the model loads, naming file:line (no run directory is created), or is
skipped under data.on_error: skip with counts and a cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.data import load as data_load
from tunesmith.errors import UserError
from tunesmith.tasks import instruct

from .helpers import make_config

GOOD = json.dumps({"instruction": "Say hi.", "output": "hi"})


def _lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


CASES = {
    "broken line": ([GOOD, GOOD, '{"instruction": "cut short", "output": '], ":3", "malformed JSON"),
    "wrong type": ([GOOD, json.dumps({"instruction": 5, "output": "x"}), GOOD], ":2", "must be a string"),
    "list where text is expected": (
        [GOOD, GOOD, GOOD, json.dumps({"instruction": "a", "output": ["not", "text"]})],
        ":4",
        "must be a string",
    ),
    "not an object": ([GOOD, "[1, 2, 3]"], ":2", "expected a JSON object"),
    "empty file": ([], "", "empty"),
    "blank lines only": (["", "   "], "", "empty"),
    "binary file": ([b"\x00\x01\x02PK\x03\x04" * 100], "", "binary"),
    "invalid utf-8": ([GOOD, b'{"instruction": "\xff\xfe", "output": "x"}'], ":2", "UTF-8"),
    "huge line": ([GOOD, json.dumps({"instruction": "x" * 10_000, "output": "y"})], ":2", "long"),
}


@pytest.fixture
def model_must_not_load(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(instruct, "load_causal_lm", never)
    monkeypatch.setattr(data_load, "MAX_LINE_BYTES", 4096)  # "huge" without writing 64 MB in a test


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_fails_before_the_model_loads_with_file_and_line(
    tiny_llama, tmp_path, model_must_not_load, case
):
    lines, where, what = CASES[case]
    train_file = _lines(tmp_path / "train.jsonl", lines)
    config = make_config(tiny_llama, train_file, tmp_path / "runs")
    with pytest.raises(UserError) as error:
        api.train(config)
    message = str(error.value)
    assert f"{train_file}{where}" in message, message
    assert what in message, message
    assert not (tmp_path / "runs").exists()  # nothing half-written


def _prepare(tiny_llama, tmp_path, lines, **overrides):
    from tunesmith.models.load import load_tokenizer

    config = make_config(tiny_llama, _lines(tmp_path / "train.jsonl", lines), tmp_path / "runs", **overrides)
    return instruct.prepare_data(config, load_tokenizer(str(tiny_llama), config.model))


def _mixed_lines(num_bad: int) -> list[str | bytes]:
    good = [json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}) for i in range(12)]
    bad = ['{"broken', json.dumps({"instruction": 1, "output": "x"}), b"\xff\xfe", "[]"][:num_bad]
    return good[:4] + list(bad) + good[4:]


def test_skip_policy_skips_bad_records_and_counts_them(tiny_llama, tmp_path):
    prepared = _prepare(tiny_llama, tmp_path, _mixed_lines(4), data__on_error="skip", data__max_skipped=4)
    skipped = prepared.stats.skipped_records
    assert len(skipped) == 4
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in skipped] == ["5", "6", "7", "8"]
    assert len(prepared.train) + len(prepared.eval) == 12


def test_skip_policy_stops_after_the_cap(tiny_llama, tmp_path):
    with pytest.raises(UserError, match=r"more than data\.max_skipped=2 bad records"):
        _prepare(tiny_llama, tmp_path, _mixed_lines(3), data__on_error="skip", data__max_skipped=2)


def test_skipped_records_are_counted_in_the_run_summary(tiny_llama, tmp_path):
    train_file = _lines(tmp_path / "train.jsonl", _mixed_lines(2))
    config = make_config(tiny_llama, train_file, tmp_path / "runs", data__on_error="skip", train__max_steps=1)
    result = api.train(config)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert len(summary["data"]["skipped_records"]) == 2


def test_skip_policy_skips_an_oversized_record(tiny_llama, tmp_path):
    # Over the record limit (1M characters at max_seq_len 128): refused by default, skipped and
    # counted with data.on_error: skip, as `data check` promised ("ready with warnings").
    oversized = json.dumps({"instruction": "Summarise this.", "output": "word " * 220_000})
    lines = [json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}) for i in range(12)]
    lines.insert(5, oversized)
    with pytest.raises(UserError, match=r"train\.jsonl:6: a record of 1,100,015 characters"):
        _prepare(tiny_llama, tmp_path, lines)
    prepared = _prepare(tiny_llama, tmp_path, lines, data__on_error="skip")
    (skipped,) = prepared.stats.skipped_records
    assert "train.jsonl:6: a record of 1,100,015 characters" in skipped
    assert len(prepared.train) + len(prepared.eval) == 12
