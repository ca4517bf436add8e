"""Tokenisation throughput for continued pretraining: tunesmith's token cache vs datasets.map.

Builds a ~100 MB JSONL corpus (`{"text": ...}` per document) from the embedded English text, then
tokenises it twice with the same fast tokenizer (the embedded one by default), each in its own
process so each peak RSS is its own:

  tunesmith   data.cache.load_or_build: streaming read, encode_batch_fast, uint16 ids to disk
  datasets    load_dataset("json") + .map(tokenizer(batch["text"]), batched=True): the usual way
              (as in transformers' run_clm.py), Arrow cache in a temporary folder

    python benchmarks/bench_tokenize.py                # ~100 MB, embedded tokenizer
    python benchmarks/bench_tokenize.py --mb 20 --tokenizer ../shared/models/stories260k

Prints a Markdown table (tokens/s on wall time and on CPU time, peak RSS) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "tunesmith" / "assets"


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Documents of 5-40 paragraphs drawn from the embedded general text and sample domain text."""
    paragraphs = []
    for source in [ASSETS / "general_heldout.txt", *sorted((ASSETS / "samples" / "domain").iterdir())]:
        paragraphs += [p.strip() for p in source.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    written = documents = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            text = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(5, 40)))
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            documents += 1
    return written, documents


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_tunesmith(corpus: Path, tokenizer_path: str, scratch: Path) -> dict:
    from transformers import AutoTokenizer

    from tunesmith.data.cache import load_or_build

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    rss_before, cpu_before = peak_rss_mb(), cpu_seconds()
    started = time.perf_counter()
    entry = load_or_build(str(corpus), tokenizer, scratch / "cache")
    seconds = time.perf_counter() - started
    assert not entry.reused
    return {
        "tokens": entry.num_tokens,
        "documents": entry.num_documents,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "rss_after_imports_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_datasets(corpus: Path, tokenizer_path: str, scratch: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    rss_before, cpu_before = peak_rss_mb(), cpu_seconds()
    started = time.perf_counter()
    dataset = datasets.load_dataset(
        "json", data_files=str(corpus), split="train", cache_dir=str(scratch / "hf")
    )
    tokenized = dataset.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for batch in tokenized.iter(batch_size=10_000) for ids in batch["input_ids"])
    return {
        "tokens": tokens,
        "documents": len(tokenized),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "rss_after_imports_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    parser.add_argument("--tokenizer", default=str(ASSETS / "base-model"), help="tokenizer directory")
    parser.add_argument("--worker", choices=["tunesmith", "datasets"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_tunesmith if args.worker == "tunesmith" else worker_datasets
        print(json.dumps(work(Path(args.corpus), args.tokenizer, Path(args.scratch))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as temp:
        corpus = Path(temp) / "corpus.jsonl"
        size, documents = make_corpus(corpus, args.mb)
        print(f"corpus: {size / 1e6:.1f} MB, {documents:,} documents; tokenizer {args.tokenizer}", flush=True)
        results = {}
        for name in ("tunesmith", "datasets"):
            scratch = Path(temp) / name
            scratch.mkdir()
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--corpus",
                str(corpus),
                "--scratch",
                str(scratch),
                "--tokenizer",
                args.tokenizer,
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(output.strip().splitlines()[-1])
            print(f"{name}: {results[name]}", flush=True)
    ours, theirs = results["tunesmith"], results["datasets"]
    assert ours["documents"] == theirs["documents"]
    print()
    print(
        "| method | tokens | wall s | tokens/s (wall) | CPU s | tokens/s (CPU) | RSS after imports | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, label in (
        ("tunesmith", "tunesmith token cache"),
        ("datasets", "datasets `load_dataset` + `.map`"),
    ):
        r = results[name]
        print(
            f"| {label} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} | "
            f"{r['cpu_seconds']:.1f} | {r['tokens'] / r['cpu_seconds']:,.0f} | {r['rss_after_imports_mb']:,.0f} MB | "
            f"{r['peak_rss_mb']:,.0f} MB |"
        )
    print(
        f"\nspeed-up (wall): {theirs['seconds'] / ours['seconds']:.2f}x; tunesmith counts one EOS per document "
        f"more ({ours['tokens'] - theirs['tokens']:,} tokens = documents: {ours['documents']:,})"
    )


if __name__ == "__main__":
    main()
