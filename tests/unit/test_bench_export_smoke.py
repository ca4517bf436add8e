"""benchmarks/bench_export.py runs end to end on the embedded tiny model and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.errors import UserError
from tunesmith.export import converter

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_export.py"


@pytest.mark.slow  # one conversion + parity check, ~20 s on a busy 2-core machine
def test_bench_export_smoke_on_the_tiny_model() -> None:
    try:
        converter.find_converter()
    except UserError:
        pytest.skip("llama.cpp's converter is not fetched (make gguf-tools)")
    command = [sys.executable, str(BENCH), "--model", "tiny", "--quant", "f16", "--new-tokens", "4"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [
        json.loads(line[len("RESULT ") :]) for line in out.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert [r["quant"] for r in rows] == ["f16"]
    assert rows[0]["size_mb"] > 0 and rows[0]["export_seconds"] > 0
    assert rows[0]["logit_error"] <= rows[0]["tolerance"]
    assert "| quant | export s |" in out.stdout
