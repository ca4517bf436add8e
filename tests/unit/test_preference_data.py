"""Preference pair formats, reply-only tokenization and the pair doctor (planted problems, file:line)."""

from __future__ import annotations

import pytest

from tests.conftest import ASSETS, write_jsonl
from tunesmith.data.doctor.pairs import check_pairs
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.preference import load_pairs, tokenize_pairs
from tunesmith.data.templates import IGNORE_INDEX, resolve_chat_template
from tunesmith.errors import UserError

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSETS / "base-model")


def test_every_format_gives_the_same_pair(tmp_path):
    rows = {
        "trl_plain": {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
        "trl_chat": {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Seven."}],
        },
        "sharegpt": {
            "conversations": [{"from": "human", "value": "Name a colour."}],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": "Seven."},
        },
        "openai": {
            "input": {"messages": PROMPT},
            "preferred_output": [{"role": "assistant", "content": "Blue."}],
            "non_preferred_output": [{"role": "assistant", "content": "Seven."}],
        },
    }
    for name, row in rows.items():
        (pair,) = load_pairs(str(write_jsonl(tmp_path / f"{name}.jsonl", [row])))
        assert pair.prompt == PROMPT, name
        assert pair.chosen == [{"role": "assistant", "content": "Blue."}], name
        assert pair.rejected == [{"role": "assistant", "content": "Seven."}], name
        assert str(pair.source).endswith(f"{name}.jsonl:1")


def test_bad_rows_name_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
            {"prompt": "Hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"},
        ],
    )
    with pytest.raises(UserError, match=r"bad\.jsonl:2.*assistant turns only"):
        load_pairs(str(path))
    policy = ErrorPolicy(on_error="skip", max_skipped=5)
    assert len(load_pairs(str(path), policy=policy)) == 1
    with pytest.raises(UserError, match="cannot tell the preference data format"):
        load_pairs(str(write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}])))


def test_only_reply_tokens_are_targets(tmp_path, tokenizer):
    template = resolve_chat_template(tokenizer)
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Name a colour."},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": history, "chosen": "Blue.", "rejected": "Seven."}])
    (example,), stats = tokenize_pairs(load_pairs(str(path)), tokenizer, template, 512)
    for side, reply in ((example.chosen, "Blue."), (example.rejected, "Seven.")):
        trained = tokenizer.decode(
            [t for t, label in zip(side.input_ids, side.labels, strict=True) if label != IGNORE_INDEX]
        )
        assert trained.startswith(
            reply
        )  # the reply and its end-of-turn token, not the earlier assistant turn
        assert "Hello there" not in trained
        assert side.input_ids[: example.prompt_tokens] == example.chosen.input_ids[: example.prompt_tokens]
    assert stats.num_examples == 1 and stats.num_truncated == 0


def test_doctor_reports_planted_problems_with_file_and_line(tmp_path, tokenizer):
    rows = []
    for i in range(20):  # length bias: the chosen reply is the longer one in every pair
        rows.append(
            {
                "prompt": f"Question {i}?",
                "chosen": f"A long and careful answer number {i}.",
                "rejected": "No.",
            }
        )
    rows.append({"prompt": "Same?", "chosen": "Same reply.", "rejected": "Same reply."})  # line 21: identical
    rows.append({"prompt": "Pick one.", "chosen": "A", "rejected": "B"})  # line 22
    rows.append({"prompt": "Pick one.", "chosen": "B", "rejected": "A"})  # line 23: swapped duplicate
    rows.append(
        {"prompt": "Question 3?", "chosen": "A long and careful answer number 3.", "rejected": "No."}
    )  # 24
    rows.append({"prompt": "Empty?", "chosen": "", "rejected": "Something."})  # line 25
    rows.append({"prompt": "word " * 600, "chosen": "ok", "rejected": "no"})  # line 26: cut at max_seq_len
    path = write_jsonl(tmp_path / "planted.jsonl", rows)
    eval_path = write_jsonl(
        tmp_path / "eval.jsonl", [{"prompt": "Question 5?", "chosen": "Five.", "rejected": "No."}]
    )
    report = check_pairs(str(path), str(eval_path), tokenizer=tokenizer, max_seq_len=64).to_dict()
    by_id = {f["id"]: f for f in report["findings"]}
    assert report["verdict"] == "not ready"  # the empty reply and the eval leak are errors
    assert by_id["identical_chosen_rejected"]["examples"] == [f"{path}:21"]
    assert by_id["conflicting_pairs"]["examples"] == [f"{path}:23 (reverses {path}:22)"]
    assert by_id["duplicate_pairs"]["examples"] == [f"{path}:24 (same as {path}:4)"]
    assert (
        by_id["empty_replies"]["examples"] == [f"{path}:25"] and by_id["empty_replies"]["severity"] == "error"
    )
    assert by_id["length_bias"]["severity"] == "warning" and "verbosity" in by_id["length_bias"]["detail"]
    assert by_id["dropped_pairs"]["examples"] == [f"{path}:26"]
    assert by_id["eval_leakage"]["examples"] == [f"{eval_path}:1 (= {path}:6)"]


def test_balanced_lengths_are_not_flagged(tmp_path):
    rows = [
        {
            "prompt": f"Q{i}?",
            "chosen": "short" if i % 2 else "a much longer reply",
            "rejected": "medium reply",
        }
        for i in range(10)
    ]
    report = check_pairs(str(write_jsonl(tmp_path / "ok.jsonl", rows))).to_dict()
    (bias,) = [f for f in report["findings"] if f["id"] == "length_bias"]
    assert bias["severity"] == "info"
    assert report["verdict"] == "ready"


def test_cli_data_check_reports_planted_pairs(tmp_path):
    import json

    from typer.testing import CliRunner

    from tunesmith.cli import app

    rows = [
        {"prompt": f"Q{i}?", "chosen": f"A careful and long answer {i}.", "rejected": "No."}
        for i in range(12)
    ]
    rows.append({"prompt": "Same?", "chosen": "Same.", "rejected": "Same."})  # line 13
    rows.append({"prompt": "Pick.", "chosen": "A", "rejected": "B"})  # line 14
    rows.append({"prompt": "Pick.", "chosen": "B", "rejected": "A"})  # line 15
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "report.json"
    for task in (["--task", "preference"], []):  # given, and detected from the fields
        result = CliRunner().invoke(app, ["data", "check", str(path), *task, "--json", str(out)])
        assert result.exit_code == 0, result.output  # warnings only
        report = json.loads(out.read_text())
        by_id = {f["id"]: f for f in report["findings"]}
        assert report["task"] == "preference" and report["verdict"] == "ready with warnings"
        assert by_id["identical_chosen_rejected"]["examples"] == [f"{path}:13"]
        assert by_id["conflicting_pairs"]["examples"] == [f"{path}:15 (reverses {path}:14)"]
        assert by_id["length_bias"]["severity"] == "warning"
