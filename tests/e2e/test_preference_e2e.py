"""task: preference end to end on a tiny model: DPO + LoRA through api.train, full finetuning with
cached reference log-probs, and the loop's invariants (accumulation) with the pair loss."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_config, write_jsonl
from tests.reliability.helpers import RecordingProgress
from tunesmith import api
from tunesmith.config import build_config

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]


@pytest.fixture
def pairs_file(tmp_path):
    rows = []
    for i in range(24):
        colour = COLOURS[i % len(COLOURS)]
        rows.append(
            {
                "conversations": [{"from": "human", "value": f"Say the colour {colour}, please ({i})."}],
                "chosen": {"from": "gpt", "value": f"{colour}"},
                "rejected": {"from": "gpt", "value": f"I will not say {COLOURS[(i + 3) % 8]}"},
            }
        )
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _config(model, data, out, **overrides):
    config = tiny_config(
        model,
        data,
        out,
        task="preference",
        eval={
            "before": True,
            "after": True,
            "forgetting": True,
            "max_general_tokens": 256,
            "num_prompts": 2,
            "max_new_tokens": 4,
        },
        **overrides,
    )
    config["data"].update({"eval_fraction": 0.25, "check": True})
    config["train"].update({"max_steps": 4, "learning_rate": 5e-2})
    return config


def test_dpo_lora_trains_and_reports_before_after(tiny_llama, pairs_file, tmp_path):
    config = _config(tiny_llama, pairs_file, tmp_path / "runs")
    config["data"]["packing"] = False  # one pair per row: a step of batch 2 is 2 pairs
    result = api.train(build_config(config))
    final = result.final_dir
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    assert json.loads((final / "tunesmith.json").read_text())["task"] == "preference"
    # The doctor's pair checks ran before training (chosen by the record kind), and the report
    # shows each held-out pair's two replies beside the base and tuned generations.
    check = json.loads((result.run_dir / "eval" / "data_check.json").read_text())
    assert check["task"] == "preference" and "verdict" in check
    html = (result.run_dir / "report.html").read_text()
    assert "<th>rejected</th>" in html and "train pair accuracy" in html
    before, after = result.before, result.after
    for metrics in (before, after):
        assert metrics["num_pairs"] == 6
        for key in (
            "accuracy",
            "margin",
            "chosen_logps",
            "rejected_logps",
            "kl_to_reference",
            "logp_accuracy",
        ):
            assert isinstance(metrics[key], float), key
        assert len(metrics["generations"]) == 2 and {"chosen", "rejected", "output"} <= set(
            metrics["generations"][0]
        )
        assert metrics["general"]["perplexity"] > 1  # the forgetting probe ran on the same loss module
    # Before: the policy is its own reference, so the ranking is the base model's log-probs.
    assert before["accuracy_kind"] == "log-prob ranking" and before["kl_to_reference"] == pytest.approx(
        0, abs=1e-7
    )
    assert before["reward_margin"] == 0.0
    # After: the adapter moved, the implicit reward separates the pairs and the policy left the reference.
    assert after["accuracy_kind"] == "implicit reward ranking"
    assert after["kl_to_reference"] > 0 and after["reward_margin"] != 0.0
    assert after["chosen_logps"] != before["chosen_logps"]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "event" not in r and "step" in r]
    assert len(steps) == 4
    # DPO at step 1 with policy == reference: -log sigmoid(0) = log 2 per pair.
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert steps[0]["num_targets"] == 2  # pairs, not tokens
    # The loop logs what the DPO loss returns, per pair of the step (TRL's rewards/* every step):
    # at step 1 the policy is its reference, so every reward and the margin are 0.
    for record in steps:
        assert {"chosen_reward", "rejected_reward", "reward_margin", "pair_accuracy"} <= set(record)
        assert "token_accuracy" not in record
        assert record["reward_margin"] == pytest.approx(record["chosen_reward"] - record["rejected_reward"])
    assert steps[0]["reward_margin"] == 0.0 and steps[-1]["reward_margin"] != 0.0
    assert 'id="plot-loss-scalars"' in html and "reward margin" in html
    assert (result.run_dir / "eval" / "data_check.json").is_file()


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_full_finetuning_with_cached_reference(tiny_llama, pairs_file, tmp_path, loss):
    config = _config(tiny_llama, pairs_file, tmp_path / "runs", preference={"loss": loss, "beta": 0.5})
    config["adapter"] = {"method": "full"}
    config["eval"]["forgetting"] = False
    result = api.train(build_config(config))
    assert (result.final_dir / "model.safetensors").is_file()
    assert result.after["chosen_logps"] != result.before["chosen_logps"]
    if loss == "ipo":  # the reference was cached before training: the tuned model has a distance to it
        assert result.after["log_ratio_to_reference"] != 0.0
        assert "kl_to_reference" not in result.after  # no reference model at hand: only the cached sums
    else:  # simpo is reference-free
        assert "log_ratio_to_reference" not in result.after
    # `tunesmith eval` later: the tuned model and its base on the pairs (no cached reference then).
    scored = api.evaluate(str(result.run_dir), str(pairs_file))
    assert scored["tuned"]["num_pairs"] == scored["baseline"]["num_pairs"] == 24
    assert scored["tuned"]["chosen_logps"] != scored["baseline"]["chosen_logps"]


def test_accumulation_matches_a_bigger_batch(tiny_llama, pairs_file, tmp_path):
    """batch 2 x accumulation 1 == batch 1 x accumulation 2: the loop normalises by the step's pairs."""
    losses = []
    for name, batch, accumulation in (("big", 2, 1), ("accumulated", 1, 2)):
        config = _config(tiny_llama, pairs_file, tmp_path / name)
        config["train"].update(
            {"batch_size": batch, "gradient_accumulation_steps": accumulation, "max_steps": 3}
        )
        config["eval"] = {"before": False, "after": False, "forgetting": False}
        result = api.train(build_config(config))
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in records if "loss" in r and "event" not in r])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_adapter_disabled_reference_needs_lora(tiny_llama, pairs_file, tmp_path):
    from tunesmith.errors import UserError

    config = _config(tiny_llama, pairs_file, tmp_path / "runs", preference={"reference": "adapter_disabled"})
    config["adapter"] = {"method": "full"}
    with pytest.raises(UserError, match="preference.reference"):
        api.train(build_config(config))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_equals_an_uninterrupted_run(tiny_llama, pairs_file, tmp_path, method):
    """Stopped after step 2 and resumed == 4 steps in one go (the cached reference is rebuilt the same)."""
    import os
    import signal

    from tunesmith.errors import TrainingInterrupted

    def config(name):
        values = _config(tiny_llama, pairs_file, tmp_path / "runs")
        values["run_name"] = name
        values["adapter"] = {"method": method, "r": 4, "alpha": 8, "dropout": 0.1}  # dropout: RNG state too
        values["eval"] = {"before": False, "after": False, "forgetting": False}
        return build_config(values)

    def losses(name):
        path = tmp_path / "runs" / name / "metrics.jsonl"
        return [json.loads(line)["loss"] for line in path.read_text().splitlines() if '"loss"' in line]

    api.train(config("straight"))

    def stop_after_two(step, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        api.train(config("resumed"), progress=RecordingProgress(stop_after_two))
    api.train(config("resumed"), resume=True)
    assert len(losses("straight")) == 4
    assert losses("resumed") == losses("straight")
