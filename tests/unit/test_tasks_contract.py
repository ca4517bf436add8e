"""The typed task contract (tasks/__init__.py): every task fills it, and the shared rules hold."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tunesmith.data.formats import KIND_FORMATS
from tunesmith.data.tokenize import TokenizeStats
from tunesmith.errors import UserError
from tunesmith.tasks import (
    STEP_UNITS,
    DataStats,
    Task,
    TaskInfo,
    get_task,
    held_out_count,
    hold_out,
    task_info,
    task_names,
)
from tunesmith.tasks.pretrain import split_documents

TASK_NAMES = ("instruct", "pretrain", "classify", "preference", "reward")


def test_the_built_in_tasks_are_registered() -> None:
    assert task_names()[: len(TASK_NAMES)] == TASK_NAMES


OPTIONAL_FIELDS = {"load_trained": Callable, "chat_refusal": str}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_fills_every_field_of_the_contract(name: str) -> None:
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name and task.info is task_info(name)
    assert task.record_kind in KIND_FORMATS
    for field in dataclasses.fields(Task):
        value = getattr(task, field.name)
        if field.name in OPTIONAL_FIELDS:  # what a head model's verbs need; causal LMs leave them None
            assert value is None or isinstance(value, OPTIONAL_FIELDS[field.name]), field.name
            continue
        assert value is not None, field.name
        if field.name != "info":
            assert callable(value), field.name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_declares_its_metrics_unit_and_needs(name: str) -> None:
    info = task_info(name)
    assert isinstance(info, TaskInfo) and info.step_unit in STEP_UNITS
    assert info.headline_metric.key == info.headline and info.metrics[0].key == info.headline
    assert len({m.key for m in info.metrics}) == len(info.metrics) and all(m.label for m in info.metrics)
    assert info.catalogue_needs and info.description


def test_each_step_accuracy_is_named_by_its_unit() -> None:
    assert {name: task_info(name).step_accuracy for name in TASK_NAMES} == {
        "instruct": "token_accuracy",
        "pretrain": "token_accuracy",
        "classify": "example_accuracy",
        "preference": "pair_accuracy",
        "reward": "completion_accuracy",
    }


def test_only_the_language_model_tasks_have_the_forgetting_probe() -> None:
    assert {name: get_task(name).has_forgetting_probe for name in TASK_NAMES} == {
        "instruct": True,
        "pretrain": True,
        "classify": False,
        "preference": True,
        "reward": False,
    }


def test_the_headline_metric_data_curve_predicts() -> None:
    assert {
        name: (get_task(name).headline_metric, get_task(name).higher_is_better) for name in TASK_NAMES
    } == {
        "instruct": ("loss", False),
        "pretrain": ("loss", False),
        "classify": ("accuracy", True),
        "preference": ("reward_accuracy", True),
        "reward": ("reward_mean", True),
    }


def test_an_unknown_task_is_a_user_error_naming_the_choices() -> None:
    with pytest.raises(UserError, match="instruct, pretrain, classify"):
        get_task("summarize")


@pytest.mark.parametrize(
    ("num_items", "fraction", "max_items"),
    [(0, 0.1, 10), (1, 0.5, 10), (2, 0.1, 10), (50, 0.1, 3), (9, 0.9, 100)],
)
def test_records_and_documents_are_held_out_by_one_rule(
    num_items: int, fraction: float, max_items: int
) -> None:
    count = held_out_count(num_items, fraction, max_items)
    assert 0 <= count <= max(0, num_items - 1) and count <= max_items
    train, held = hold_out(list(range(num_items)), fraction, max_items, seed=3)
    train_documents, held_documents = split_documents(num_items, fraction, max_items, seed=3)
    assert len(held) == len(held_documents) == count
    assert sorted(train + held) == list(range(num_items))
    assert sorted([*train_documents.tolist(), *held_documents.tolist()]) == list(range(num_items))


def test_data_stats_are_plain_json_without_the_fields_a_task_lacks() -> None:
    stats = DataStats(TokenizeStats(num_examples=3, num_tokens=40), chat_template="the tokenizer's")
    values = stats.as_dict()
    assert values["train"]["num_examples"] == 3 and values["eval"] is None
    assert "labels" not in values and "class_weights" not in values
    assert "chat template: the tokenizer's" in stats.summary()
