"""Benchmark: `tunesmith data check` on 1,000,000 short instruction records (~200 MB JSONL).

Generates synthetic alpaca records (English words from the embedded general text, Zipf-weighted)
with planted exact duplicates, near-duplicate pairs and eval leaks, runs the full check in a
fresh process, and reports wall time, peak RSS and the recall on the planted pairs.

    python benchmarks/bench_data_check.py                 # 1M records
    python benchmarks/bench_data_check.py --records 50000 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENERAL_TEXT = ROOT / "src" / "tunesmith" / "assets" / "general_heldout.txt"


def vocabulary() -> list[str]:
    words = sorted(set(re.findall(r"[a-z]{2,}", GENERAL_TEXT.read_text(encoding="utf-8").lower())))
    return words


def shingle_set(text: str) -> set[str]:
    from tunesmith.data.doctor.detect import normalize_text, shingles

    return set(shingles(normalize_text(text)))


def whole_text(row: dict) -> str:
    """What the doctor fingerprints for an alpaca row (formats.to_record -> doctor.scan.record_texts)."""
    return f"user: {row['instruction']}\nassistant: {row['output']}"


def generate(folder: Path, num_records: int, num_exact: int, num_near: int, num_eval: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary())
    weights = 1.0 / np.arange(1, len(words) + 1) ** 0.8  # Zipf-like: realistic word frequencies
    weights /= weights.sum()

    def sentence(count: int) -> str:
        return " ".join(words[rng.choice(len(words), size=count, p=weights)])

    num_fresh = num_records - num_exact - num_near
    rows = []
    for _ in range(num_fresh):
        rows.append(
            {
                "instruction": sentence(int(rng.integers(8, 14))).capitalize() + "?",
                "input": "",
                "output": sentence(int(rng.integers(16, 24))).capitalize() + ".",
            }
        )
    planted_exact, planted_near = [], []
    sources = rng.choice(num_fresh, size=num_exact + num_near, replace=False)
    for index in sources[:num_exact]:  # same text, different case and spacing
        row = dict(rows[index])
        row["instruction"] = "  " + row["instruction"].upper()
        planted_exact.append((int(index) + 1, len(rows) + 1))
        rows.append(row)
    for index in sources[num_exact:]:  # one word of the answer replaced
        row = dict(rows[index])
        answer = row["output"].split()
        position = int(rng.integers(len(answer) - 4, len(answer)))
        answer[position] = "replaced"
        row["output"] = " ".join(answer)
        planted_near.append((int(index) + 1, len(rows) + 1))
        rows.append(row)
    order = rng.permutation(len(rows))  # spread the copies through the file
    new_line = {int(old) + 1: new + 1 for new, old in enumerate(order)}
    train = folder / "train.jsonl"
    with open(train, "w", encoding="utf-8") as handle:
        for old in order:
            handle.write(json.dumps(rows[old]) + "\n")
    planted_exact = [(new_line[a], new_line[b]) for a, b in planted_exact]
    planted_near_pairs = []
    for a, b in planted_near:
        similarity = len(shingle_set(whole_text(rows[a - 1])) & shingle_set(whole_text(rows[b - 1]))) / len(
            shingle_set(whole_text(rows[a - 1])) | shingle_set(whole_text(rows[b - 1]))
        )
        planted_near_pairs.append((new_line[a], new_line[b], similarity))
    eval_rows = [
        {"instruction": sentence(10).capitalize() + "?", "input": "", "output": sentence(20) + "."}
        for _ in range(num_eval)
    ]
    leaked = rng.choice(num_fresh, size=100, replace=False)
    for index in leaked[:50]:
        eval_rows.append(dict(rows[index]))
    for index in leaked[50:]:
        row = dict(rows[index])
        row["output"] = row["output"].rsplit(" ", 1)[0] + " replaced."
        eval_rows.append(row)
    evaluation = folder / "eval.jsonl"
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in eval_rows), encoding="utf-8")
    return {
        "train": str(train),
        "eval": str(evaluation),
        "exact": planted_exact,
        "near": planted_near_pairs,
        "bytes": train.stat().st_size,
    }


def child(train: str, evaluation: str, threshold: float, out: str) -> None:
    """The measured part, in a fresh process: the full check as `tunesmith data check` runs it."""
    from tunesmith.config import ModelConfig
    from tunesmith.data.doctor import run_check
    from tunesmith.models.load import load_tokenizer, resolve_model_path

    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve_model_path("embedded"), ModelConfig(name="embedded"))
    result, _ = run_check(
        train,
        evaluation,
        kind="conversation",
        task="instruct",
        tokenizer=tokenizer,
        near_duplicate_threshold=threshold,
    )
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    removed = {f"{path}:{line}": reason for (path, line), reason in result.scans["train"].removed.items()}
    Path(out).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "report": result.report.to_dict(),
                "removed": removed,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--exact", type=int, default=5_000, help="planted exact duplicates")
    parser.add_argument("--near", type=int, default=5_000, help="planted near-duplicate pairs")
    parser.add_argument(
        "--eval", type=int, default=2_000, help="fresh eval records (+50 exact, +50 near leaks)"
    )
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--folder", default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]), args.child[3])
        return
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.folder or temp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        planted = generate(folder, args.records, args.exact, args.near, args.eval, seed=0)
        print(
            f"generated {args.records:,} records, {planted['bytes'] / 1e6:.0f} MB, "
            f"in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        out = folder / "result.json"
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                planted["train"],
                planted["eval"],
                str(args.threshold),
                str(out),
            ],
            check=True,
        )
        wall = time.perf_counter() - started
        measured = json.loads(out.read_text())
        report, removed = measured["report"], measured["removed"]
        train = planted["train"]

        def found(pair: tuple[int, int], reason: str) -> bool:
            # The copy may come first in the shuffled file; then the doctor removes the other one.
            return any(removed.get(f"{train}:{line}", "").startswith(reason) for line in pair)

        exact_found = sum(found(pair, "exact") for pair in planted["exact"])
        near_above = [(a, b) for a, b, s in planted["near"] if s >= args.threshold]
        near_found = sum(found(pair, "near duplicate") for pair in near_above)
        near_found_all = sum(found((a, b), "near duplicate") for a, b, _ in planted["near"])
        similarities = np.array([s for _, _, s in planted["near"]])
        counts = {f["id"]: f["count"] for f in report["findings"]}
        figures = {
            "records": args.records,
            "megabytes": round(planted["bytes"] / 1e6),
            "wall_seconds_check": round(measured["seconds"], 1),
            "wall_seconds_process": round(wall, 1),
            "cpu_seconds_check_process": round(measured["cpu_seconds"], 1),
            "load_average_1min": round(os.getloadavg()[0], 1),
            "peak_rss_mb": round(measured["peak_rss_mb"]),
            "cpu_count": os.cpu_count(),
            "exact_recall": f"{exact_found}/{len(planted['exact'])}",
            "near_recall_at_threshold": f"{near_found}/{len(near_above)}",
            "near_planted_true_jaccard": f"min {similarities.min():.2f}, median {np.median(similarities):.2f}",
            "near_recall_at_true_jaccard_0.85+": "{}/{}".format(
                sum(found((a, b), "near duplicate") for a, b, s in planted["near"] if s >= 0.85),
                sum(1 for *_, s in planted["near"] if s >= 0.85),
            ),
            "near_found_of_all_planted": f"{near_found_all}/{len(planted['near'])}",
            "findings": counts,
            "verdict": report["verdict"],
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
