"""benchmarks/bench_peers_cpu.py: its scorer's completion tokens and its table (no training here)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from ..conftest import REPO, SHARED

STORIES = SHARED / "models" / "stories260k"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_peers_cpu", REPO / "benchmarks" / "bench_peers_cpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers_cpu"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not STORIES.is_dir(), reason="stories260k not available")
def test_the_scorer_counts_the_straddling_token_as_completion():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    ids, mask = _bench().completion_mask(tokenizer, "Question: who?\nAnswer: ", "She did.", 512)
    scored = tokenizer.convert_ids_to_tokens([t for t, m in zip(ids, mask, strict=True) if m])
    assert scored[0] == "▁She" and scored[-1] == tokenizer.eos_token


def test_table_gives_the_wall_time_ratio_and_the_medians():
    bench = _bench()

    def run(side, wall, accuracy):
        return {
            "case": "sst2",
            "side": side,
            "train_wall_s": wall,
            "train_cpu_s": wall,
            "accuracy": accuracy,
            "peak_rss_mb": 600.0,
            "trained_tokens": 9600,
        }

    rows = [
        run("peer", 30.0, 0.68),
        run("peer", 40.0, 0.70),
        run("ours", 20.0, 0.69),
        run("ours", 30.0, 0.71),
    ]
    markdown = bench.table(rows)
    ours = next(line for line in markdown.splitlines() if "| ours |" in line)
    assert "1.40x" in ours  # median 35 s / median 25 s
    assert "accuracy 0.700" in ours
    assert "shakespeare" not in markdown
    # Per trained token: medians of 9600/20, 9600/30 (ours) against 9600/30, 9600/40 (peer).
    assert ours.rstrip(" |").endswith(f"{(480 + 320) / 2 / ((320 + 240) / 2):.2f}x")
    # A side that does not count its trained tokens leaves the column empty.
    for row in rows[:2]:
        row["trained_tokens"] = 0
    assert bench.table(rows).splitlines()[-1].rstrip().endswith("| 9,600 |  |")
