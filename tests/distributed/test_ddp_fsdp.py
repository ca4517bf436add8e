"""Multi-process training on CPU (gloo, 2 processes launched by torchrun) equals one process.

Same global batch, same rows, same loss normaliser: the per-step losses of DDP and FSDP runs
match a one-process run within 1e-5 (fp32), checkpoints resume across world sizes (2 -> 1 and
1 -> 2), and a rank that raises ends the whole job instead of leaving the others hanging.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_jsonl
from tunesmith import api
from tunesmith.config import Config

TOLERANCE = 1e-5
LAUNCH_TIMEOUT = 300  # seconds; a hang fails the test instead of the CI job
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _config(tiny_llama: Path, data: Path, output_dir: Path, name: str, steps: int, strategy: str) -> dict:
    return tiny_config(
        tiny_llama,
        data,
        output_dir,
        run_name=name,
        # Accumulation 2 exercises the no-sync micro-batches; a constant rate makes the
        # schedule independent of max_steps, so a resumed run can go further than its first part.
        train__batch_size=4,
        train__gradient_accumulation_steps=2,
        train__max_steps=steps,
        train__lr_scheduler="constant",
        train__warmup_ratio=0.0,
        distributed={"strategy": strategy},
    )


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TORCHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, check=False
    )


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def _assert_same(losses: dict[int, float], reference: dict[int, float], steps: list[int]) -> None:
    for step in steps:
        assert abs(losses[step] - reference[step]) < TOLERANCE, (step, losses[step], reference[step])


@pytest.fixture(scope="module")
def setup(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    rows = [
        {
            "instruction": f"Repeat the word {w} {i % 3 + 1} times.",
            "input": "",
            "output": " ".join([w] * (i % 3 + 1)),
        }
        for i, w in enumerate(["red", "blue", "green", "small", "large", "happy", "quiet", "fast"] * 5)
    ]
    data = write_jsonl(root / "train.jsonl", rows)
    runs = root / "runs"
    reference = api.train(Config.model_validate(_config(tiny_llama, data, runs, "reference", 4, "ddp")))
    return {"root": root, "data": data, "runs": runs, "reference": _losses(reference.run_dir)}


def test_ddp_two_processes_match_one_and_resume_on_one(setup, tiny_llama):
    """2 processes (DDP, --nproc convenience) for 2 steps, then the same run resumed on 1 process."""
    config = _config(tiny_llama, setup["data"], setup["runs"], "ddp-then-one", 2, "ddp")
    path = _write(config, setup["root"] / "ddp.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2"],
        cwd=setup["root"],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = setup["runs"] / "ddp-then-one"
    assert result.stdout.count("resolved config") == 1  # rank 0 alone prints
    checkpoint = run_dir / "checkpoints" / "step-000002"
    assert (checkpoint / ".metadata").is_file()  # a DCP checkpoint
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    _assert_same(_losses(run_dir), setup["reference"], [1, 2])

    config["train"]["max_steps"] = 4
    api.train(Config.model_validate(config), resume=True)
    _assert_same(_losses(run_dir), setup["reference"], [1, 2, 3, 4])
    assert (run_dir / "checkpoints" / "step-000004" / "trainable.safetensors").is_file()


def test_fsdp_two_processes_resume_a_one_process_checkpoint(setup, tiny_llama):
    """1 process for 2 steps (safetensors checkpoint), then resumed on 2 processes with FSDP.

    Steps 3 and 4 are FSDP steps: they match the one-process reference as well.
    """
    config = _config(tiny_llama, setup["data"], setup["runs"], "one-then-fsdp", 2, "fsdp")
    api.train(Config.model_validate(config))
    config["train"]["max_steps"] = 4
    path = _write(config, setup["root"] / "fsdp.yaml")
    result = _torchrun("-m", "tunesmith", "train", str(path), "--resume", cwd=setup["root"])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = setup["runs"] / "one-then-fsdp"
    _assert_same(_losses(run_dir), setup["reference"], [1, 2, 3, 4])
    assert (run_dir / "checkpoints" / "step-000004" / ".metadata").is_file()
    # The final model is written once, by rank 0, in the one-process format: a PEFT adapter.
    from safetensors.torch import load_file

    adapter = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    assert adapter and all(t.ndim == 2 for t in adapter.values())  # full LoRA matrices, not shards


FAILING_RANK = """
import os, sys
from tunesmith import cli
from tunesmith.train import loop

calls = []
original = loop.batch_to_device


def failing(batch, device):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:  # rank 1, second step, first micro-batch
        raise RuntimeError("injected failure on rank 1")
    return original(batch, device)


loop.batch_to_device = failing
sys.argv = ["tunesmith", "train", sys.argv[1]]
cli.main()
"""


def test_a_rank_that_raises_stops_the_job(setup, tiny_llama):
    config = _config(tiny_llama, setup["data"], setup["runs"], "failing", 4, "ddp")
    script = setup["root"] / "fail_on_rank_1.py"
    script.write_text(FAILING_RANK)
    started = time.perf_counter()
    result = _torchrun(str(script), str(_write(config, setup["root"] / "fail.yaml")), cwd=setup["root"])
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stdout + result.stderr
    assert time.perf_counter() - started < LAUNCH_TIMEOUT / 2  # stopped, not timed out
    assert not (setup["runs"] / "failing" / "final").exists()
