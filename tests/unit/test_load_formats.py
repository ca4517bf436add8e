"""Reading instruction data from every file type, folders, globs and (mocked) hub datasets."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.formats import Conversation, load_records
from tunesmith.errors import UserError

ROWS = [
    {"instruction": "Say hi.", "input": "", "output": "Hi."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
]


def write_all_types(folder):
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "b.json").write_text(json.dumps({"data": ROWS}))
    header = "instruction,input,output\n"
    (folder / "c.csv").write_text(header + 'Say hi.,,Hi.\n"Add 2, then 3.",,"5"\n')
    (folder / "d.tsv").write_text("instruction\tinput\toutput\nSay hi.\t\tHi.\n")
    pq.write_table(pa.Table.from_pylist(ROWS), folder / "e.parquet")
    return folder


def test_every_file_type_in_a_folder(tmp_path):
    folder = write_all_types(tmp_path / "data")
    records = load_records(str(folder), "conversation")
    assert len(records) == 2 + 2 + 2 + 1 + 2
    assert all(isinstance(r, Conversation) for r in records)
    by_file = {r.source.path.rsplit("/", 1)[-1]: r for r in records}
    assert by_file["c.csv"].messages[0]["content"] == "Add 2, then 3."  # quoted comma kept
    assert by_file["c.csv"].source.line == 3
    assert by_file["e.parquet"].messages[1]["content"] == "5"


def test_globs_and_lists(tmp_path):
    folder = write_all_types(tmp_path / "data")
    assert len(load_records(str(folder / "*.jsonl"), "conversation")) == 2
    assert len(load_records([str(folder / "a.jsonl"), str(folder / "d.tsv")], "conversation")) == 3
    with pytest.raises(UserError, match="matches no file"):
        load_records(str(folder / "*.xml"), "conversation")


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(UserError, match="binary"):
        load_records(str(path), "conversation")


def test_hub_dataset_names_go_through_datasets(monkeypatch):
    calls = {}

    def load_dataset(name, split, token=None):
        calls["args"] = (name, split)
        return [{"prompt": "Say hi.", "completion": "Hi."}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records = load_records("someorg/some-set:validation", "conversation")
    assert calls["args"] == ("someorg/some-set", "validation")
    assert records[0].messages[-1] == {"role": "assistant", "content": "Hi."}
    assert str(records[0].source) == "hub:someorg/some-set[validation]:1"


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    def load_dataset(name, split, token=None):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError, match="not a local file.*hub"):
        load_records("someorg/some-set", "conversation")


def test_a_field_mapping_to_a_column_the_data_lacks_is_named_not_ignored(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"q": f"{i} + 1?", "a": str(i + 1)}) + "\n" for i in range(2)))
    with pytest.raises(UserError, match=r"a\.jsonl:1: the field mapping \(output = `answr`\) names a column"):
        load_records(str(path), "conversation", fields={"instruction": "q", "output": "answr"})
    (record, _) = load_records(str(path), "conversation", fields={"instruction": "q", "output": "a"})
    assert record.messages[-1]["content"] == "1"
    # A row that has the canonical column already is readable: the mapping applies where it can.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        json.dumps(ROWS[0]) + "\n" + json.dumps({"instruction": "Say yes.", "reply": "yes"}) + "\n"
    )
    records = load_records(str(mixed), "conversation", fields={"output": "reply"})
    assert [r.messages[-1]["content"] for r in records] == ["Hi.", "yes"]


def test_pairs_and_prompts_name_a_mapping_to_a_missing_column_too(tmp_path):
    from tunesmith.data.load import ErrorPolicy
    from tunesmith.data.preference import load_pairs
    from tunesmith.data.prompts import load_prompts

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "Hi", "good": "Hello.", "rejected": "Go."}) + "\n")
    with pytest.raises(UserError, match=r"pairs\.jsonl:1: the field mapping \(chosen = `better`\)"):
        load_pairs(str(pairs), fields={"prompt": "question", "chosen": "better"})
    with pytest.raises(UserError, match=r"pairs\.jsonl:1: the field mapping \(prompt = `qestion`\)"):
        load_prompts(str(pairs), {"prompt": "qestion"}, None, None, ErrorPolicy())
    assert len(load_prompts(str(pairs), {"prompt": "question"}, None, None, ErrorPolicy())) == 1
