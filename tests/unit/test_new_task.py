"""Adding a task touches tasks/ and config.py only (issue 27): a throwaway task, registered here and
nowhere else, is validated by the config, trained by the recipe, logged by the loop, shown by the
report, the before/after line and the model card, and found in the catalogue, with no other change."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from tunesmith.tasks import Metric, TaskInfo, get_task, register, unregister

from ..conftest import ASSETS, tiny_config

NAME = "echo-test"


class _EchoLoss(nn.Module):
    """instruct's loss, plus a scalar of its own for the loop to log."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, **batch: torch.Tensor) -> dict:
        out = dict(self.inner(**batch))
        out["logged"] = {"echo_share": (out["num_correct"], out["num_targets"])}
        return out


@pytest.fixture
def echo_task():
    info = TaskInfo(
        name=NAME,
        module="(registered by the test)",
        description="a throwaway task: instruct's code under declarations of its own",
        record_kind="conversation",
        step_unit="token",
        metrics=(Metric("loss", "echo loss", False), Metric("perplexity", "echo perplexity", False)),
        headline="loss",
        config_keys=("data.system_prompt",),
        four_bit_base=False,
        catalogue_needs=("causal_lm", "base"),
    )
    instruct = get_task("instruct")

    def make_loss(model, config, cross_entropy=None):
        return _EchoLoss(instruct.make_loss(model, config, cross_entropy))

    register(info, dataclasses.replace(instruct, info=info, make_loss=make_loss))
    yield info
    unregister(NAME)


def test_the_config_reads_the_registry(echo_task) -> None:
    from tunesmith.config import build_config, config_warnings, task_only_keys
    from tunesmith.errors import UserError

    config = build_config({"task": NAME, "data": {"system_prompt": "Be brief."}})
    assert config.task == NAME and config_warnings(config) == []
    assert task_only_keys()["data.system_prompt"] == (NAME,)
    other = build_config({"task": "instruct", "data": {"system_prompt": "Be brief."}})
    assert any("data.system_prompt applies to task echo-test only" in w for w in config_warnings(other))
    with pytest.raises(UserError, match="qlora"):
        build_config({"task": NAME, "adapter": {"method": "qlora"}})
    with pytest.raises(UserError, match="echo-test"):
        build_config({"task": "no-such-task"})


def test_the_catalogue_offers_what_the_task_needs(echo_task) -> None:
    from tunesmith.models.catalog import filter_catalog

    ids = [e.id for e in filter_catalog(echo_task.catalogue_needs)]
    assert "openai-community/gpt2" in ids and "Qwen/Qwen2.5-0.5B-Instruct" not in ids
    assert "google-bert/bert-base-uncased" not in ids


def test_a_registered_task_trains_logs_and_reports(echo_task, tiny_llama, tmp_path) -> None:
    from tunesmith import api
    from tunesmith.config import build_config
    from tunesmith.export import model_card
    from tunesmith.train.rundir import read_metrics, read_model_info

    values = tiny_config(tiny_llama, ASSETS / "samples" / "instruct.jsonl", tmp_path / "runs", task=NAME)
    values["eval"]["after"] = True
    result = api.train(build_config(values))
    steps = [r for r in read_metrics(result.run_dir) if "loss" in r and "event" not in r]
    assert len(steps) == 3
    # The loop logs the scalar the loss returned, normalised as the loss said (a share in [0, 1]).
    assert all(0.0 <= r["echo_share"] <= 1.0 and r["echo_share"] == r["token_accuracy"] for r in steps)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["task"] == NAME
    html = (result.run_dir / "report.html").read_text()
    assert "held-out echo loss" in html and 'id="plot-loss-scalars"' in html and "echo share" in html
    card = model_card(result.run_dir, read_model_info(result.final_dir), None)
    assert "held-out after: echo loss" in card
