"""benchmarks/bench_preference.py runs end to end on a tiny budget (tunesmith's side; TRL's where its venv is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_preference.py"


@pytest.mark.slow  # ~1-2 min on a busy 2-core machine
def test_bench_preference_smoke(tmp_path) -> None:
    if not (SHARED / "models" / "stories260k").is_dir():
        pytest.skip("../shared is not present")
    peer = Path("/work/venv-peers/bin/python")
    sides = "ours,trl" if peer.exists() else "ours"
    command = [sys.executable, str(BENCH), "--steps", "2", "--batch-size", "2", "--max-len", "256"]
    command += ["--sides", sides, "--out", str(tmp_path / "result.json")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["base"]["num_pairs"] > 0 and result["base"]["accuracy_kind"] == "log-prob ranking"
    for side in sides.split(","):
        assert result[side]["seconds"] > 0 and result[side]["peak_rss_bytes"] > 0
        assert result[side]["after"]["num_pairs"] == result["base"]["num_pairs"]
        assert result[side]["after"]["accuracy_kind"] == "implicit reward ranking"
        assert result[side]["after"]["kl_to_reference"] > 0
