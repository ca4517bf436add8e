"""Throughput of one config on 1 process and on N processes (DDP and FSDP), same global batch.

Runs `tunesmith train CONFIG` once per setting through the real CLI (torchrun for N > 1),
then reads each run's metrics.jsonl: median tokens/s over the logged steps after the first
(warm-up), the final loss, and the largest per-step loss difference to the 1-process run
(the runs see the same rows, so on fp32 it stays ~1e-6; in bf16 larger).

Usage (on a GPU machine; prepared here, not yet measured):
  python benchmarks/bench_distributed.py examples/instruct_lora.yaml --nproc 2 \
      --set train.max_steps=30 train.log_every=1 eval.before=false eval.after=false
  python benchmarks/bench_distributed.py CONFIG --nproc 2 --device cpu   # CPU smoke check (gloo)
Append the printed table to benchmarks/RESULTS.md with the machine, date and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(config: str, nproc: int, strategy: str, output_dir: Path, overrides: list[str]) -> dict:
    name = f"{strategy}-{nproc}"
    launcher = [sys.executable, "-m", "tunesmith"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
        ]
        launcher += ["-m", "tunesmith"]
    command = [
        *launcher,
        "train",
        config,
        f"output_dir={output_dir}",
        f"run_name={name}",
        f"distributed.strategy={strategy}",
        "logging.progress=false",
        *overrides,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (output_dir / name / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if "loss" in r and "event" not in r}
    speeds = [r["tokens_per_second"] for s, r in sorted(steps.items()) if s > 1 and "tokens_per_second" in r]
    return {
        "setting": name,
        "tokens_per_second": statistics.median(speeds) if speeds else float("nan"),
        "final_loss": steps[max(steps)]["loss"],
        "losses": {s: r["loss"] for s, r in steps.items()},
        "wall_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], help="dotted config overrides")
    args = parser.parse_args()
    overrides = [f"model.device={args.device}", *args.set]
    with tempfile.TemporaryDirectory() as folder:
        output_dir = Path(folder)
        results = [run(args.config, 1, "ddp", output_dir, overrides)]
        for strategy in ("ddp", "fsdp"):
            results.append(run(args.config, args.nproc, strategy, output_dir, overrides))
    reference = results[0]["losses"]
    print("| setting | tokens/s (median) | final loss | max loss diff to 1 process | wall s |")
    print("|---|---|---|---|---|")
    for result in results:
        diff = max(abs(result["losses"][s] - reference[s]) for s in reference if s in result["losses"])
        print(
            f"| {result['setting']} | {result['tokens_per_second']:,.0f} | {result['final_loss']:.4f} "
            f"| {diff:.2e} | {result['wall_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
