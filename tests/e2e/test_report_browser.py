"""A real tiny run evaluated before and after, its report.html opened in headless Chromium,
and `tunesmith eval` reproducing the run's own before/after numbers.

Chromium comes from the Debian package `chromium` (the test set-up installs it); without it the
browser test is skipped. The screenshot is kept as tests/artifacts/report.png.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import build_config

from ..conftest import REPO, tiny_config, write_jsonl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
WORDS = ["red", "blue", "green", "small", "large", "happy", "quiet", "fast", "slow", "warm"]


def rows(start: int, count: int) -> list[dict]:
    return [
        {
            "instruction": f"Item {i}: repeat the word {WORDS[i % 10]} {i % 3 + 1} times.",
            "input": "",
            "output": " ".join([WORDS[i % 10]] * (i % 3 + 1)),
        }
        for i in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("report-run")
    train = write_jsonl(root / "train.jsonl", rows(0, 40))
    held_out = write_jsonl(root / "eval.jsonl", rows(100, 6))
    config = tiny_config(
        tiny_llama,
        train,
        root / "runs",
        data={"train": str(train), "eval": str(held_out), "max_seq_len": 128, "check": True},
        train__max_steps=6,
        train__eval_every=3,
        eval={
            "before": True,
            "after": True,
            "forgetting": True,
            "num_prompts": 2,
            "max_new_tokens": 8,
            "max_general_tokens": 512,
        },
    )
    result = api.train(build_config(config))
    return result, held_out


def test_train_evaluates_before_and_after_and_writes_the_report(tiny_run):
    result, _ = tiny_run
    before = json.loads((result.run_dir / "eval" / "before.json").read_text())
    after = json.loads((result.run_dir / "eval" / "after.json").read_text())
    for side in (before, after):
        assert {
            "loss",
            "token_accuracy",
            "exact_match",
            "rouge_l",
            "general",
            "generations",
            "examples",
        } <= set(side)
        assert side["general"]["perplexity"] > 1
        assert [g["reference"] for g in side["generations"]] == ["red red", "blue blue blue"]
        assert len(side["examples"]) == 6 and all(e["loss"] > 0 for e in side["examples"])
    assert after["loss"] < before["loss"]  # 6 steps at lr 1e-2 on a random model: the loss must fall
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["peak_rss_bytes"] > 50 * 2**20
    assert (result.run_dir / "report.html").is_file()


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    result, _ = tiny_run
    report = result.run_dir / "report.html"
    html = report.read_text()
    for attribute in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attribute.startswith(("#", "data:")), f"the report refers outside itself: {attribute}"

    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    shown = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    console = [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    dom = shown.stdout
    # The DOM as the browser built it: every plot and table in place.
    for plot in ("loss", "accuracy", "headline", "throughput"):
        assert re.search(rf'<figure class="plot" id="plot-{plot}"><svg[^>]*>.*?<path', dom, re.S), plot
    for section in (
        "summary",
        "curves",
        "metrics",
        "forgetting",
        "generations",
        "examples",
        "data",
        "speed",
        "config",
    ):
        assert f'<section id="{section}">' in dom, section
    assert dom.count("<table") >= 6
    generations = dom[dom.index('<section id="generations">') :]
    assert "Item 100: repeat the word red 2 times." in generations and "red red" in generations

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    shot = subprocess.run(
        [
            *flags,
            f"--screenshot={screenshot}",
            "--window-size=1280,4000",
            "--hide-scrollbars",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_eval_command_reproduces_the_runs_before_and_after(tiny_run, tmp_path):
    result, held_out = tiny_run
    out = tmp_path / "eval-out"
    invoked = CliRunner().invoke(
        app, ["eval", str(result.run_dir), "--data", str(held_out), "--out", str(out)]
    )
    assert invoked.exit_code == 0, invoked.output
    tuned = json.loads((out / "tuned.json").read_text())
    baseline = json.loads((out / "baseline.json").read_text())
    before = json.loads((result.run_dir / "eval" / "before.json").read_text())
    after = json.loads((result.run_dir / "eval" / "after.json").read_text())
    # Same data, tokenizer, template and model weights as the run's own evaluation: same numbers.
    assert tuned["loss"] == pytest.approx(after["loss"], rel=1e-4)
    assert baseline["loss"] == pytest.approx(before["loss"], rel=1e-4)
    assert baseline["general"]["perplexity"] == pytest.approx(before["general"]["perplexity"], rel=1e-4)
    assert [g["output"] for g in tuned["generations"]] == [g["output"] for g in after["generations"]]
    comparison = json.loads((out / "comparison.json").read_text())
    assert (
        comparison["baseline_model"]
        == json.loads((result.final_dir / "tunesmith.json").read_text())["base_model"]
    )
    assert "loss" in invoked.output and "tuned" in invoked.output
