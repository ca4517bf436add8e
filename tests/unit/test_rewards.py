"""Reward functions (evaluate/rewards.py): the built-ins, the user's own, and scoring."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tunesmith.config import RewardFunctionConfig, build_config
from tunesmith.errors import UserError
from tunesmith.evaluate.rewards import build_rewards, extract_answer, reference_parses, score


def _rewards(*specs: dict, max_tokens: int = 8):
    return build_rewards([RewardFunctionConfig(**s) for s in specs], max_tokens)


def _score(rewards, completions: list[str], rows: list[dict], ids: list[list[int]] | None = None):
    ids = ids if ids is not None else [[1] * len(c.split()) for c in completions]
    return score(rewards, [[{"role": "user", "content": "q"}]] * len(completions), completions, ids, rows)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She sells 9 eggs.\n#### 18", "18"),
        ("so the total is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("First 3, then 1,000 dollars", "1,000"),
        ("no number here", None),
    ],
)
def test_the_final_answer_is_read_as_gsm8k_then_boxed_then_the_last_number(
    text: str, answer: str | None
) -> None:
    assert extract_answer(text) == answer


def test_answer_match_normalises_numbers_and_skips_rows_without_a_reference() -> None:
    rewards = _rewards({"function": "answer_match", "reference": "final_answer"})
    completions = ["#### 1,000", "The answer is $18.00", "#### 17", "#### 5", "it is \\boxed{0.5}"]
    rows = [
        {"final_answer": "1000"},
        {"final_answer": "Janet makes 9 * 2 = 18\n#### 18"},
        {"final_answer": "18"},
        {"final_answer": None},
        {"final_answer": "\\frac{1}{2}"},
    ]
    scores = _score(rewards, completions, rows)
    expected = [1.0, 1.0, 0.0, math.nan, 1.0]
    assert [v if not math.isnan(v) else "nan" for v in scores.per_reward[0]] == [
        v if not math.isnan(v) else "nan" for v in expected
    ]
    assert scores.total == [1.0, 1.0, 0.0, 0.0, 1.0]  # "does not apply" adds nothing to the total
    assert not reference_parses(None) and reference_parses("#### 3")


def test_label_match_wants_exactly_the_labels_word() -> None:
    rewards = _rewards({"function": "label_match", "labels": {"0": "negative", "1": "positive"}})
    scores = _score(
        rewards, ["Positive.", " negative", "It is positive", "negative"], [{"label": 1}] * 3 + [{"label": 0}]
    )
    assert scores.per_reward[0] == [1.0, 0.0, 0.0, 1.0]


def test_regex_length_weights_and_the_logged_stats() -> None:
    rewards = _rewards(
        {"function": "regex", "pattern": r"^\s*One day", "weight": 2.0},
        {"function": "length", "max_tokens": 2, "weight": 0.5},
    )
    scores = _score(rewards, ["One day a cat", "A dog"], [{}, {}], ids=[[1, 2, 3], [1, 2]])
    assert scores.per_reward == [[1.0, 0.0], [-0.5, -0.0]]
    assert scores.total == [2.0 - 0.25, 0.0]
    stats = scores.stats()
    assert stats["reward/regex/mean"] == 0.5 and stats["reward/regex/std"] == 0.5
    assert stats["reward/length/mean"] == -0.25 and set(stats) >= {"reward/mean", "reward/std"}


def test_tool_call_must_parse_and_fit_the_rows_schema() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {}, "unit": {}},
                    "required": ["city"],
                },
            },
        }
    ]
    completions = [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '{"name": "get_weather", "arguments": {"unit": "C"}}',  # a required argument missing
        '{"name": "get_weather", "arguments": {"city": "Paris", "when": "now"}}',  # an unknown one
        '{"name": "book_flight", "arguments": {}}',
        "It is sunny.",
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    ]
    rows = [{"tools": tools}] * 5 + [{"tools": None}]
    values = _score(_rewards({"function": "tool_call"}), completions, rows).per_reward[0]
    assert values[:5] == [1.0, 0.0, 0.0, 0.0, 0.0] and math.isnan(values[5])


def test_a_users_function_from_a_file_gets_the_columns_by_name(tmp_path: Path) -> None:
    code = tmp_path / "my_rewards.py"
    code.write_text(
        "def shouts(prompts, completions, completion_ids, topic, **kwargs):\n"
        "    return [float(c.isupper()) + (0.5 if t == 'cats' else 0.0) for c, t in zip(completions, topic)]\n"
        "def broken(prompts, completions, **kwargs):\n"
        "    return [1.0]\n"
    )
    rewards = _rewards({"function": f"{code}:shouts"})
    assert rewards[0].name == "shouts"
    scores = _score(rewards, ["HELLO", "hello"], [{"topic": "cats"}, {"topic": "dogs"}])
    assert scores.per_reward[0] == [1.5, 0.0]
    with pytest.raises(UserError, match="returned 1 scores for 2 completions"):
        _score(_rewards({"function": f"{code}:broken"}), ["a", "b"], [{}, {}])
    with pytest.raises(UserError, match="has no function 'nope'"):
        _rewards({"function": f"{code}:nope"})
    with pytest.raises(UserError, match="not found"):
        _rewards({"function": f"{tmp_path / 'missing.py'}:shouts"})


def test_a_module_function_and_the_config_errors() -> None:
    rewards = _rewards({"function": "math:isfinite", "name": "finite"})
    assert rewards[0].name == "finite"
    with pytest.raises(UserError, match="cannot import"):
        _rewards({"function": "no_such_module_here:f"})
    with pytest.raises(UserError, match="reward.functions"):
        build_config({"task": "reward"})
    with pytest.raises(UserError, match="regex needs `pattern`"):
        build_config({"task": "reward", "reward": {"functions": [{"function": "regex"}]}})
    with pytest.raises(UserError, match="unknown config key `reward.group`"):
        build_config({"task": "reward", "reward": {"functions": [{"function": "length"}], "group": 4}})
    with pytest.raises(UserError, match="built-in"):
        build_config({"task": "reward", "reward": {"functions": [{"function": "exactly"}]}})
    with pytest.raises(UserError, match="share a name"):
        _rewards({"function": "length"}, {"function": "length"})
