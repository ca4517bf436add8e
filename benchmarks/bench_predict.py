"""select's predictions against the real run: tokens/s, peak memory and training time within 30%.

    python benchmarks/bench_predict.py                          # stories260k: SST-2, tiny-Shakespeare, GSM8K
    python benchmarks/bench_predict.py --smollm /path/to/SmolLM2-135M-Instruct   # + SmolLM2 LoRA on GSM8K
    python benchmarks/bench_predict.py --max-steps 4 --rows 64  # a smoke run on a tiny budget

For each case: `tunesmith select --candidates MODEL --out DIR` (its steady-state probe writes the
`prediction:` block into DIR/config.yaml), then `tunesmith train DIR/config.yaml` in a fresh process
(peak RSS is that process's own), and the run's summary.json `prediction` block is read back. With
--max-steps the run is shortened; the wall-time prediction follows (seconds per step x steps).
Prints one `RESULT {json}` line per case and exits 1 when a figure is off by more than --tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIGURES = ("tokens_per_second", "peak_memory_bytes", "wall_seconds")


def _head(source: Path, rows: int, target: Path) -> Path:
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        out.writelines(islice(lines, rows))
    return target


def cases(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str, Path]]:
    """(name, task, data, model) per case."""
    datasets, stories = SHARED / "datasets", SHARED / "models" / "stories260k"
    gsm8k = _head(datasets / "gsm8k" / "train-00000-of-00002.jsonl", args.rows, work / "gsm8k.jsonl")
    sst2 = _head(datasets / "sst2" / "train_2k.jsonl", args.rows, work / "sst2.jsonl")
    # One document per speech: select holds some out to measure the fit (train.txt is one document).
    shakespeare = datasets / "tinyshakespeare" / "speeches.jsonl"
    if args.rows < 2000:  # a smoke run: the first speeches
        shakespeare = _head(shakespeare, args.rows, work / "speeches.jsonl")
    found = [
        ("stories260k sst2 (classify)", "classify", str(sst2), stories),
        ("stories260k tiny-shakespeare (pretrain)", "pretrain", str(shakespeare), stories),
        ("stories260k gsm8k (instruct)", "instruct", str(gsm8k), stories),
    ]
    if args.smollm:
        found.append(("SmolLM2-135M gsm8k LoRA (instruct)", "instruct", str(gsm8k), args.smollm))
    return found


def tunesmith(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "tunesmith", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000, help="training rows of SST-2 and GSM8K")
    parser.add_argument("--max-steps", type=int, default=None, help="shorten each run to this many steps")
    parser.add_argument(
        "--smollm", type=Path, default=None, help="SmolLM2-135M-Instruct directory (LoRA case)"
    )
    parser.add_argument("--tolerance", type=float, default=0.30)
    parser.add_argument("--gpu-memory", default=None, help="select for a GPU of this size (else --cpu)")
    parser.add_argument("--only", default=None, help="run the cases whose name holds this text")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    failed = False
    with tempfile.TemporaryDirectory() as temp:
        work = args.out or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        for index, (name, task, data, model) in enumerate(cases(args, work)):
            if args.only and args.only not in name:
                continue
            out = work / f"select-{index}"
            device = ["--gpu-memory", args.gpu_memory] if args.gpu_memory else ["--cpu"]
            chosen = tunesmith(
                "select",
                "--task",
                task,
                "--data",
                data,
                *device,
                "--out",
                str(out),
                "--candidates",
                str(model),
            )
            if chosen.returncode != 0:
                print(f"select failed for {name}:\n{chosen.stderr[-3000:]}", file=sys.stderr)
                failed = True
                continue
            overrides = [
                f"output_dir={work / 'runs'}",
                f"run_name=case-{index}",
                "eval.before=false",
                "eval.after=false",
                "eval.forgetting=false",
                "logging.progress=false",
                "data.check=false",
            ]
            if task == "pretrain":
                overrides.append("data.max_eval_examples=16")
            if args.max_steps:
                overrides.append(f"train.max_steps={args.max_steps}")
            trained = tunesmith("train", str(out / "config.yaml"), *overrides)
            if trained.returncode != 0:
                print(f"train failed for {name}:\n{trained.stderr[-3000:]}", file=sys.stderr)
                failed = True
                continue
            summary = json.loads((work / "runs" / f"case-{index}" / "summary.json").read_text())
            prediction = summary["prediction"]
            line: dict = {"case": name, "source": prediction["source"], "steps": summary["steps"]}
            for figure in FIGURES:
                values = prediction[figure]
                ratio = values["ratio"]
                ok = ratio is not None and abs(ratio - 1.0) <= args.tolerance
                failed |= not ok
                line[figure] = {**values, "within": ok}
            line["notes"] = prediction["notes"]
            print("RESULT " + json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
