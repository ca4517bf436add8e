"""benchmarks/gpu_all.sh --dry-run: the whole device script on the CPU (tiny shape, 2 steps)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_all.sh"


@pytest.mark.slow  # every piece of the device call on a tiny model: ~4 min on 2 busy cores
def test_gpu_all_dry_run_writes_the_results_and_passes_the_gates(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "GPU_ALL_SHAPES": "tiny"}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["mode"] == "dry" and summary["env"]["torch"]
    ours = summary["ours"]
    # full and LoRA, then the SDPA comparison run: all with their correctness gates passed
    assert sorted(r["lora"] for r in ours) == [False, False, True]
    for result in ours:
        assert result["gates"]["all_ok"], result["gates"]
        assert result["tokens_per_s"] > 0 and result["flops_per_token"] > 0
    assert "MFU" in summary["mfu_formula"]
    table = (tmp_path / "results.md").read_text()
    assert "| tiny | full | tunesmith" in table and "| tiny | lora | tunesmith" in table
    # Peers run when their script is reachable (../shared/bench or benchmarks/peers), else a note says so.
    assert summary["peers"] or any("peers" in note for note in summary["notes"])
