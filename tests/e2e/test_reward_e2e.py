"""Task reward end to end: a reward rises on held-out prompts with real sampling; exact resume; the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED, write_jsonl
from tunesmith import api
from tunesmith.config import build_config
from tunesmith.errors import TrainingInterrupted
from tunesmith.train.rundir import read_metrics

STORIES = SHARED / "models" / "stories260k"
SUBJECTS = [
    "a cat",
    "a dog",
    "Lily",
    "Tom",
    "the sun",
    "a ball",
    "a tree",
    "a bird",
    "a frog",
    "a car",
    "Sue",
    "Ben",
]
SUBJECTS += ["a cake", "the sea", "a fish", "a hat"]


def prompts_file(tmp_path: Path) -> Path:
    phrasings = ["Tell me a story about {}.", "Write about {}.", "A tale of {}, please."]
    return write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": p.format(s), "topic": s} for p in phrasings for s in SUBJECTS],
    )


def reward_config(model: Path, train_file: Path, output: Path, **sections: dict) -> dict:
    config = {
        "task": "reward",
        "model": {"name": str(model), "device": "cpu"},
        "adapter": {"method": "full"},
        "data": {"train": str(train_file), "max_seq_len": 128, "check": False, "eval_fraction": 0.25},
        "train": {
            "max_steps": 24,
            "batch_size": 4,
            "learning_rate": 5e-4,
            "eval_every": 0,
            "seed": 0,
            "num_threads": 1,
        }
        | {"warmup_ratio": 0.0, "lr_scheduler": "constant"},
        "reward": {
            "functions": [{"function": "regex", "pattern": r"^\s*One day"}],
            "group_size": 8,
            "max_completion_tokens": 8,
            "preflight_prompts": 8,
        },
        "eval": {"forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(output),
        "run_name": "run",
    }
    for section, values in sections.items():
        config[section] = config.get(section, {}) | values
    return config


@pytest.mark.skipif(not STORIES.is_dir(), reason="stories260k is not in ../shared")
def test_a_programmatic_reward_rises_on_held_out_prompts(tmp_path: Path) -> None:
    """stories260k learns to open its stories with "One day": sampled on the CPU, 24 steps of 4 x 8."""
    config = build_config(reward_config(STORIES, prompts_file(tmp_path), tmp_path / "runs"))
    result = api.train(config)
    before, after = result.before["reward_mean"], result.after["reward_mean"]
    assert before <= 0.25 and after >= 0.75, (before, after)  # held-out prompts, greedy, the same reward
    assert result.after["num_prompts"] == 12 and result.after["reward_regex"] == after
    side_by_side = result.after["generations"]
    assert side_by_side and all(g["output"].lstrip().startswith("One day") for g in side_by_side)
    preflight = json.loads((result.run_dir / "eval" / "preflight.json").read_text())
    assert preflight["prompts"] == 8 and 0 < preflight["groups_with_spread"] <= 1
    records = [r for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(records) == 24
    for key in (
        "reward/regex/mean",
        "reward/regex/std",
        "zero_spread_share",
        "seconds_sampling",
        "clip_fraction",
    ):
        assert key in records[0], key
    early = sum(r["reward/mean"] for r in records[:4]) / 4
    late = sum(r["reward/mean"] for r in records[-4:]) / 4
    assert late > early + 0.3  # the training reward rose too
    assert (result.run_dir / "report.html").is_file() and (result.final_dir / "model.safetensors").is_file()


REWARD_CODE = """
def token_sum(prompts, completions, completion_ids, topic, **kwargs):
    # Spread in every group, and the row's columns arrive by name.
    return [float(sum(ids) % 3) + (0.5 if t == "a cat" else 0.0) for ids, t in zip(completion_ids, topic)]
"""


def _resume_config(tiny_llama: Path, tmp_path: Path, output: Path) -> dict:
    code = tmp_path / "rewards.py"
    code.write_text(REWARD_CODE)
    return reward_config(
        tiny_llama,
        prompts_file(tmp_path),
        output,
        adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1},  # dropout: the RNG state matters
        train={"max_steps": 4, "learning_rate": 1e-2, "batch_size": 2},
        reward={"functions": [{"function": f"{code}:token_sum"}], "group_size": 3, "max_completion_tokens": 5}
        | {"num_iterations": 2, "beta": 0.05, "loss": "dapo", "preflight_prompts": 0},
        eval={"before": False, "after": False},
    )


def test_resume_mid_run_equals_the_uninterrupted_run(tiny_llama: Path, tmp_path: Path) -> None:
    straight = api.train(build_config(_resume_config(tiny_llama, tmp_path, tmp_path / "straight")))

    class StopAtTwo:
        def start(self, *args, **kwargs): ...
        def message(self, text, level="info"): ...
        def close(self): ...

        def step(self, step, record):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    config = build_config(_resume_config(tiny_llama, tmp_path, tmp_path / "resumed"))
    with pytest.raises(TrainingInterrupted):
        api.train(config, progress=StopAtTwo())
    resumed = api.train(config, resume=True)
    a = [r for r in read_metrics(straight.run_dir) if "loss" in r]
    b = [r for r in read_metrics(resumed.run_dir) if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "reward/mean", "kl", "clip_fraction"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    from safetensors.torch import load_file

    final_a = load_file(straight.final_dir / "adapter_model.safetensors")
    final_b = load_file(resumed.final_dir / "adapter_model.safetensors")
    assert all(bool((final_a[k] == final_b[k]).all()) for k in final_a)


def test_the_cli_trains_from_a_config_file_and_says_what_the_preflight_found(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import yaml

    values = reward_config(
        tiny_llama,
        prompts_file(tmp_path),
        tmp_path / "runs",
        train={"max_steps": 2, "batch_size": 2},
        reward={"group_size": 2, "max_completion_tokens": 4, "preflight_prompts": 4, "eval_prompts": 4},
    )
    config_file = tmp_path / "reward.yaml"
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    # A random model never opens with "One day": no group differs, and the pre-flight says what to do.
    assert "pre-flight: 4 prompts x 2" in output and "0% of the groups got differing rewards" in output
    assert "warm the model up" in output
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["task"] == "reward" and summary["after"]["num_prompts"] == 4


def test_a_reward_that_cannot_load_stops_the_run_before_anything_is_written(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from tunesmith.errors import UserError

    values = reward_config(
        tiny_llama,
        prompts_file(tmp_path),
        tmp_path / "runs",
        reward={"functions": [{"function": f"{tmp_path / 'nowhere.py'}:score"}]},
    )
    with pytest.raises(UserError, match=r"reward.functions\[0\].function.*not found"):
        api.train(build_config(values))
    assert not (tmp_path / "runs" / "run").exists()
