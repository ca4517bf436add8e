"""Prompt data for task reward (data/prompts.py, tasks/reward.py) and its data doctor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunesmith.config import build_config
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.prompts import load_prompts
from tunesmith.errors import UserError


def test_prompts_come_as_text_messages_instruction_or_a_template(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "What is 2+2?", "answer": "4"},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
            {"instruction": "Add 3 and 4.", "input": "", "final_answer": "7"},
        ],
    )
    records = load_prompts(str(data), {}, None, "Answer well.", ErrorPolicy())
    assert [r.prompt[-1]["content"] for r in records] == ["What is 2+2?", "Hi", "Q?", "Add 3 and 4."]
    assert records[0].prompt[0] == {"role": "system", "content": "Answer well."}
    assert records[1].prompt[0]["content"] == "Be brief."  # a system turn of its own is kept
    assert records[0].columns == {"answer": "4"} and records[3].columns["final_answer"] == "7"
    assert records[2].prompt[-1]["role"] == "user"  # the reference answer is not part of the prompt
    sst2 = write_jsonl(tmp_path / "s.jsonl", [{"text": "a fine film", "label": 1}])
    (record,) = load_prompts(str(sst2), {}, "Review: {text}\nPositive or negative?", None, ErrorPolicy())
    assert record.prompt == [{"role": "user", "content": "Review: a fine film\nPositive or negative?"}]
    assert record.columns == {"text": "a fine film", "label": 1}


def test_a_row_without_a_prompt_is_an_error_naming_its_line_and_the_fix(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"question": "where?"}])
    with pytest.raises(UserError, match=r"p.jsonl:2: no prompt .* data.fields.prompt"):
        load_prompts(str(data), {}, None, None, ErrorPolicy())
    assert len(load_prompts(str(data), {"prompt": "question"}, None, None, ErrorPolicy())) == 2
    with pytest.raises(UserError, match=r"prompt_template` names the column 'text'"):
        load_prompts(str(data), {}, "Review: {text}", None, ErrorPolicy())


def _config(tiny_llama: Path, train: Path, **reward) -> object:
    return build_config(
        {
            "task": "reward",
            "model": {"name": str(tiny_llama), "device": "cpu"},
            "data": {"train": str(train), "max_seq_len": 64, "eval_fraction": 0.3},
            "reward": {"functions": [{"function": "answer_match"}], "max_completion_tokens": 16} | reward,
        }
    )


def test_the_task_prepares_prompts_and_the_doctor_finds_their_problems(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from tunesmith.data import doctor
    from tunesmith.models.load import load_tokenizer
    from tunesmith.tasks import get_task

    rows = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(12)]
    rows += [{"prompt": "What is 1 plus 1?", "answer": "2"}, {"prompt": "long " * 80, "answer": "x"}]
    rows += [{"prompt": "No reference here", "answer": "n/a"}]
    config = _config(tiny_llama, write_jsonl(tmp_path / "p.jsonl", rows))
    tokenizer = load_tokenizer(config.model.name, config.model)
    task = get_task("reward")
    prepared = task.prepare_data(config, tokenizer)
    prompts = prepared.prompts
    assert len(prompts.train) + len(prompts.eval) == 14  # the 80-word prompt is over the budget of 48
    assert [len(r) for r in prepared.rows] == [1] * len(prompts.train)
    assert all(e.input_ids == p.prompt_ids for e, p in zip(prepared.train, prompts.train, strict=True))
    assert prepared.stats.train.num_over_budget + prepared.stats.eval.num_over_budget == 1
    report = doctor.preflight(config.data, prepared, task.record_kind, "reward").to_dict()
    ids = {f["id"] for f in report["findings"]}
    assert "prompts_over_budget" in ids
    assert ("duplicate_prompts" in ids) or ("prompt_leakage" in ids)  # "1 plus 1" twice: one side or both
    # "n/a" is still a reference answer_match can compare (as text); a missing column is not.
    config = _config(
        tiny_llama, tmp_path / "p.jsonl", functions=[{"function": "answer_match", "reference": "gold"}]
    )
    warnings = task.prepare_data(config, tokenizer).stats.warnings
    assert any("no reference it can read in column `gold`" in w for w in warnings)


def test_data_check_for_prompt_data(tiny_llama: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Question {i}?"} for i in range(6)])
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Question 1?"}, {"prompt": "Other?"}])
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "data", "check", str(train), "--eval", str(held)]
        + ["--task", "reward", "--model", str(tiny_llama), "--json", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # leakage into the named eval file blocks
    assert "held-out prompts also in training" in done.stdout
