"""Learning from rewards under torchrun (gloo, 2 processes on CPU): each rank samples its share of the
step's prompts, the loss is normalised over both ranks' answers, rank 0 alone writes the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.test_reward_e2e import REWARD_CODE, prompts_file, reward_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def test_two_processes_train_from_rewards_and_rank_zero_writes_the_run(
    tiny_llama: Path, tmp_path: Path
) -> None:
    code = tmp_path / "rewards.py"
    code.write_text(REWARD_CODE)
    values = reward_config(
        tiny_llama,
        prompts_file(tmp_path),
        tmp_path / "runs",
        adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        train={"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2},
        reward={"functions": [{"function": f"{code}:token_sum"}], "group_size": 2, "max_completion_tokens": 4}
        | {"preflight_prompts": 2, "eval_prompts": 2, "beta": 0.05},
        distributed={"strategy": "ddp"},
    )
    config = tmp_path / "reward.yaml"
    config.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [*TORCHRUN, "-m", "tunesmith.cli", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all("reward/mean" in r and "kl" in r for r in steps)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "reward" and summary["after"]["num_prompts"] == 2
