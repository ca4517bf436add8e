"""benchmarks/bench_gpu.py runs end to end on the CPU (tiny shape) and its correctness gates pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow  # ~15 s alone, more on a busy 2-core machine
def test_bench_gpu_smoke_on_cpu() -> None:
    command = [
        sys.executable,
        str(BENCH),
        "--arch",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--warmup",
        "1",
    ]
    command += ["--tokens-per-step", "512", "--max-len", "256", "--gate-steps", "3"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [
        json.loads(line[len("RESULT ") :]) for line in out.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert [r["lora"] for r in results] == [False, True]
    for result in results:
        assert result["gates"]["all_ok"], result["gates"]
        assert result["tokens_per_s"] > 0 and result["tokens_per_step"] > 0
        # In fp32 on the CPU the fast path and the plain HF loss agree closely.
        assert result["gates"]["step0_loss"] == pytest.approx(result["gates"]["step0_reference"], rel=1e-5)
