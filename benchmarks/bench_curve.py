"""A learning-curve check that can fail: the curve fitted on 1/8..1/2 of the data predicts the
held-out metric of the run on all of it, within its stated band, verified by that run.

    python benchmarks/bench_curve.py                     # GSM8K (loss) and SST-2 (accuracy), stories260k
    python benchmarks/bench_curve.py --case gsm8k --epochs 2
    python benchmarks/bench_curve.py --max-steps 4 --eval-rows 16   # a smoke run on a tiny budget

GSM8K: the first --rows (2,000) rows of the train split, instruct, held-out loss on the first
--eval-rows of the test split. SST-2: the first 2,000 training sentences (train_2k.jsonl),
classify, accuracy on the validation split. Each fraction trains the same epochs (steps in
proportion to its rows; with --max-steps, that many steps on all the data, scaled). Prints one
`RESULT {json}` line per case and exits 1 when a run on all the data falls outside its band.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "src"))


def _head(source: Path, rows: int, target: Path) -> Path:
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        out.writelines(islice(lines, rows))
    return target


def case_config(case: str, args: argparse.Namespace, work: Path) -> dict:
    datasets = SHARED / "datasets"
    train = {"epochs": args.epochs, "batch_size": 8, "learning_rate": 1e-3, "seed": 0, "log_every": 10}
    if args.max_steps:
        train["max_steps"] = args.max_steps
    common = {
        "model": {"name": str(args.model), "device": args.device},
        "adapter": {"method": "full"},
        "train": train,
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(work / "runs"),
    }
    if case == "gsm8k":
        return {
            **common,
            "task": "instruct",
            "data": {
                "train": str(
                    _head(datasets / "gsm8k" / "train-00000-of-00002.jsonl", args.rows, work / "gsm8k.jsonl")
                ),
                "eval": str(
                    _head(datasets / "gsm8k" / "test.jsonl", args.eval_rows, work / "gsm8k-test.jsonl")
                ),
                "max_seq_len": 256,
                "max_eval_examples": args.eval_rows,
                "check": False,
            },
        }
    return {
        **common,
        "task": "classify",
        "data": {
            "train": str(_head(datasets / "sst2" / "train_2k.jsonl", args.rows, work / "sst2.jsonl")),
            "eval": str(
                _head(datasets / "sst2" / "validation.jsonl", args.eval_rows, work / "sst2-val.jsonl")
            ),
            "labels": ["0", "1"],
            "class_weights": "none",
            "max_seq_len": 128,
            "max_eval_examples": args.eval_rows,
            "check": False,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=["gsm8k", "sst2", "both"], default="both")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "stories260k")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=872)
    parser.add_argument("--fractions", default="0.125,0.25,0.5")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None, help="steps of the run on all the data")
    parser.add_argument("--max-minutes", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per fitted size (seeds)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="keep the curves here (default: a temp dir)")
    args = parser.parse_args()

    from tunesmith.config import build_config
    from tunesmith.select.curve import data_curve, parse_fractions

    failed = False
    with tempfile.TemporaryDirectory() as temp:
        work = args.out or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        for case in ("gsm8k", "sst2") if args.case == "both" else (args.case,):
            config = build_config(case_config(case, args, work), source=f"bench_curve {case}")
            result = data_curve(
                config,
                fractions=parse_fractions(args.fractions),
                max_minutes=args.max_minutes,
                out_dir=work / f"curve-{case}",
                verify=True,
                repeats=args.repeats,
            )
            check = result["verification"]
            failed |= not check["within_band"]
            line = {
                "case": case,
                "metric": result["metric"],
                "points": [
                    (
                        p["fraction"],
                        p["rows"],
                        p["steps"],
                        round(p["value"], 4),
                        [round(v, 4) for v in p["runs"]],
                    )
                    for p in result["points"]
                ],
                "seed_spread": result["seed_spread"],
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in check.items()},
                "verdict": result["verdict"],
                "seconds": round(result["seconds"], 1),
                "estimated_seconds": round(result["cost"]["estimated_seconds"], 1),
            }
            print("RESULT " + json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
