"""Rewards: programs that score sampled completions (task reward), built in or the user's own.

Every reward is a function with TRL's signature, so a function written for TRL's GRPOTrainer works:

    def my_reward(prompts, completions, completion_ids, **columns) -> list[float | None]

`prompts` are the prompts' messages, `completions` the sampled answers as text, `completion_ids`
their token ids, and every other column of the prompt rows arrives by name as a list (`answer`,
`label`, `tools` ...), one entry per completion. None means "does not apply to this completion":
it counts in neither the reward's mean nor the total.

Built-ins (config `reward.functions[].function`):
    answer_match  the final answer equals the reference: `#### N` (GSM8K), `\\boxed{..}` (through
                  math-verify where installed), else the last number; numbers normalised (1,000 = 1000.0)
    label_match   the completion is one word, the reference label's word (`labels` maps values to words)
    regex         the completion contains `pattern` (re.search): 1, else 0
    tool_call     the completion holds a call that parses and fits the row's `tools` schema (name,
                  required arguments, no unknown ones): 1, else 0
    length        0 up to `max_tokens`, then down linearly to -1 at twice that length

A user function is named `module:function` or `path/file.py:function`: loading it runs the user's
own Python code, as a training script would. Data never names code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import string
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError
from tunesmith.evaluate.toolcalls import parse_tool_call

if TYPE_CHECKING:
    from tunesmith.config import RewardFunctionConfig

RewardFunction = Callable[..., Sequence[float | None]]

_GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Reward:
    """One configured reward: its name in logs, its weight and the function that scores."""

    name: str
    weight: float
    function: RewardFunction


# --------------------------------------------------------------------------------------------
# Answers


def normalize_number(text: str) -> float | None:
    """'1,000' -> 1000.0, '$18' -> 18.0, '18.' -> 18.0; None when `text` is not a number."""
    cleaned = text.strip().strip(".").replace(",", "").replace("$", "").rstrip("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, position = 0, start + len("\\boxed")
    for index in range(position, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[position + 1 : index]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion or a reference: `#### N`, else `\\boxed{}`, else the last number."""
    match = _GSM8K_ANSWER.search(text)
    if match:
        return match.group(1).strip()
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(value: Any) -> str | None:
    """A reference's answer: after `####`, inside `\\boxed{}`, else the whole value (`18`, `\\frac{1}{2}`)."""
    if value is None:
        return None
    text = str(value)
    match = _GSM8K_ANSWER.search(text)
    if match:
        return match.group(1).strip()
    boxed = _boxed(text)
    answer = (boxed if boxed is not None else text).strip()
    return answer or None


def answers_equal(answer: str, reference: str) -> bool:
    """Numbers compared as numbers; LaTeX through math-verify where installed; else normalised text."""
    number, expected = normalize_number(answer), normalize_number(reference)
    if number is not None and expected is not None:
        return abs(number - expected) <= 1e-6 * max(1.0, abs(expected))
    if importlib.util.find_spec("math_verify") is not None:
        from math_verify import parse, verify

        try:
            return bool(verify(parse(f"${reference}$"), parse(f"${answer}$")))
        except Exception:  # math-verify raises on what it cannot parse: not equal  # noqa: BLE001
            return False
    return answer.strip().lower() == reference.strip().lower()


def reference_parses(value: Any) -> bool:
    """Whether answer_match can read a reference (the data doctor counts the ones it cannot)."""
    return reference_answer(value) is not None


def answer_match(reference_column: str) -> RewardFunction:
    def answer_match(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
        references = _column(columns, reference_column, "answer_match")
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            expected = reference_answer(reference)
            if expected is None:
                scores.append(None)  # no reference to compare with: the reward does not apply
                continue
            answer = extract_answer(completion)
            scores.append(float(answer is not None and answers_equal(answer, expected)))
        return scores

    return answer_match


# --------------------------------------------------------------------------------------------
# Labels, patterns, tool calls, length


def _one_word(text: str) -> str:
    return text.strip().strip(string.punctuation + string.whitespace).lower()


def label_match(reference_column: str, labels: dict[str, str] | None) -> RewardFunction:
    words = {str(k): v.lower() for k, v in (labels or {}).items()}

    def label_match(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
        references = _column(columns, reference_column, "label_match")
        return [
            None if label is None else float(_one_word(text) == words.get(str(label), str(label).lower()))
            for text, label in zip(completions, references, strict=True)
        ]

    return label_match


def regex(pattern: str) -> RewardFunction:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(
            f"config key `reward.functions[].pattern`: {pattern!r} is not a regex ({exc})"
        ) from None

    def regex(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
        return [float(compiled.search(text) is not None) for text in completions]

    return regex


def call_fits(call: dict[str, Any], tools: list[dict[str, Any]]) -> bool:
    """A parsed call names one of `tools` and passes its required arguments and no unknown ones."""
    for tool in tools:
        function = tool.get("function", tool)
        if function.get("name") != call["name"]:
            continue
        schema = function.get("parameters") or {}
        properties = schema.get("properties")
        required = set(schema.get("required") or [])
        arguments = set(call["arguments"])
        return required <= arguments and (properties is None or arguments <= set(properties))
    return False


def tool_call(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
    tools = columns.get("tools") or [None] * len(completions)
    scores: list[float | None] = []
    for text, row_tools in zip(completions, tools, strict=True):
        if not row_tools:
            scores.append(None)  # a row without tools: no call is expected of it
            continue
        call = parse_tool_call(text)
        scores.append(float(call is not None and call_fits(call, row_tools)))
    return scores


def length(max_tokens: int) -> RewardFunction:
    def length(
        prompts: list, completions: list[str], completion_ids: list[list[int]], **columns: Any
    ) -> list:
        return [-min(1.0, max(0, len(ids) - max_tokens) / max_tokens) for ids in completion_ids]

    return length


def _column(columns: dict[str, Any], name: str, reward: str) -> list[Any]:
    if name not in columns:
        raise UserError(
            f"reward {reward}: the prompt data has no column `{name}` (columns: {', '.join(sorted(columns))}); "
            f"name yours with reward.functions[].reference"
        )
    return list(columns[name])


# --------------------------------------------------------------------------------------------
# The configured rewards, and scoring


def load_user_function(spec: str, key: str) -> RewardFunction:
    """`module:function` or `path/file.py:function`: imports (runs) the user's code."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UserError(f"config key `{key}`: {path} not found; give the path of your .py file")
            # Each file runs once per process (the run builds its rewards more than once).
            module_name = (
                "tunesmith_user_rewards_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
            )
            module = sys.modules.get(module_name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(module_name, path)
                assert module_spec is not None and module_spec.loader is not None
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise UserError(
            f"config key `{key}`: cannot import {where!r} ({exc}); is it on PYTHONPATH?"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"config key `{key}`: {where} has no function {name!r}")
    return function  # the user's function, called with TRL's signature


def _builtin(spec: RewardFunctionConfig, max_completion_tokens: int) -> RewardFunction | None:
    if spec.function == "answer_match":
        return answer_match(spec.reference or "answer")
    if spec.function == "label_match":
        return label_match(spec.reference or "label", spec.labels)
    if spec.function == "regex":
        return regex(spec.pattern or "")
    if spec.function == "tool_call":
        return tool_call
    if spec.function == "length":
        return length(spec.max_tokens or max(1, max_completion_tokens // 2))
    return None


def build_rewards(specs: Sequence[RewardFunctionConfig], max_completion_tokens: int) -> list[Reward]:
    """The config's reward functions, ready to score."""
    rewards = []
    for index, spec in enumerate(specs):
        key = f"reward.functions[{index}].function"
        builtin = _builtin(spec, max_completion_tokens)
        function = builtin or load_user_function(spec.function, key)
        name = spec.name or (spec.function if builtin else spec.function.rpartition(":")[2])
        rewards.append(Reward(name, spec.weight, function))
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise UserError("config key `reward.functions`: two rewards share a name; give each its own `name`")
    return rewards


@dataclass
class RewardScores:
    """Each reward's score per completion (NaN where it does not apply) and the weighted total."""

    names: list[str]
    per_reward: list[list[float]]
    total: list[float]

    def stats(self) -> dict[str, float]:
        """`reward/<name>/mean` and `.../std` over the completions it applies to; the total's too."""
        values: dict[str, float] = {}
        for name, scores in zip(self.names, self.per_reward, strict=True):
            mean, std = _mean_std([s for s in scores if not math.isnan(s)])
            values[f"reward/{name}/mean"], values[f"reward/{name}/std"] = mean, std
        values["reward/mean"], values["reward/std"] = _mean_std(self.total)
        return values


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def score(
    rewards: Sequence[Reward],
    prompts: list[Any],
    completions: list[str],
    completion_ids: list[list[int]],
    rows: list[dict[str, Any]],
) -> RewardScores:
    """Every reward of every completion (`rows`: each completion's prompt columns) and the weighted total."""
    keys = sorted({k for row in rows for k in row})
    columns = {k: [row.get(k) for row in rows] for k in keys}
    per_reward = []
    for reward in rewards:
        raw = reward.function(
            prompts=prompts, completions=completions, completion_ids=completion_ids, **columns
        )
        values = list(raw) if raw is not None else []
        if len(values) != len(completions):
            raise UserError(
                f"reward {reward.name}: returned {len(values)} scores for {len(completions)} completions; "
                "return one float (or None) per completion"
            )
        per_reward.append([math.nan if v is None else _finite(v, reward.name) for v in values])
    total = [
        sum(r.weight * s[i] for r, s in zip(rewards, per_reward, strict=True) if not math.isnan(s[i]))
        for i in range(len(completions))
    ]
    return RewardScores([r.name for r in rewards], per_reward, total)


def _finite(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"reward {name}: returned {value!r}; return a float (or None) per completion"
        ) from None
    if not math.isfinite(number):
        raise UserError(f"reward {name}: returned {number}; rewards must be finite")
    return number
