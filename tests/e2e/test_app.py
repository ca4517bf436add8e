"""`tunesmith ui` as a real subprocess, driven in headless Chromium (Debian's, through Playwright):
the runs list, a tiny run started from the form, its step count and curve advancing, stopped
(a checkpoint appears), resumed to the end, compared with another run; a typo in the form shows
the CLI's own message; cross-site requests and paths outside the output folder are refused.

The browser test takes the screenshots in docs/ (ui-runs.png, ui-launch.png, ui-run.png,
ui-compare.png) when UPDATE_SCREENSHOTS=1 is set (else into tests/artifacts/). Without Chromium or Playwright it is skipped; the guards are also tested
without a browser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tunesmith import api
from tunesmith.config import build_config
from tunesmith.train.rundir import RunLock

from ..conftest import REPO, tiny_config, write_jsonl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The screenshots of docs/ are remade with UPDATE_SCREENSHOTS=1; a plain test run writes them to
# tests/artifacts/ (ignored by git) so that running the suite leaves the checkout clean.
DOCS = REPO / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else REPO / "tests" / "artifacts"
WORDS = ["red", "blue", "green", "small", "large", "happy", "quiet", "fast", "slow", "warm"]
TYPO_MESSAGE = "unknown config key `train.learnig_rate`; did you mean `train.learning_rate`?"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(count: int) -> list[dict]:
    return [
        {
            "instruction": f"Item {i}: repeat the word {WORDS[i % 10]} {i % 3 + 1} times.",
            "input": "",
            "output": " ".join([WORDS[i % 10]] * (i % 3 + 1)),
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama):
    """A folder as a user has it: examples/tiny.yaml, data, and runs/ holding one finished run."""
    work = tmp_path_factory.mktemp("ui")
    train = write_jsonl(work / "data" / "train.jsonl", _rows(40))
    example = {
        "task": "instruct",
        "model": {"name": str(tiny_llama), "device": "cpu"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": "data/train.jsonl", "max_seq_len": 128, "eval_fraction": 0.1},
        # Far more steps than the test waits for: it stops the run, then resumes it to a near end.
        "train": {
            "max_steps": 100000,
            "batch_size": 2,
            "learning_rate": 0.01,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "eval_every": 0,
            "num_threads": 1,
        },
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": "runs",
    }
    (work / "examples").mkdir()
    (work / "examples" / "tiny.yaml").write_text(yaml.safe_dump(example, sort_keys=False))
    baseline = tiny_config(
        tiny_llama,
        train,
        work / "runs",
        run_name="baseline",
        train__max_steps=6,
        eval={"before": True, "after": True, "forgetting": False, "num_prompts": 2, "max_new_tokens": 8},
    )
    api.train(build_config(baseline))
    (work / "secret.txt").write_text("not for the page")
    # A link inside a run that leads outside it: the page must not follow it.
    (work / "runs" / "baseline" / "outside.txt").symlink_to(work / "secret.txt")
    return work


@pytest.fixture(scope="module")
def server(workspace):
    port = _free_port()
    log = workspace / "ui.log"
    command = [sys.executable, "-m", "tunesmith", "ui", "--dir", "runs", "--examples", "examples"]
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=workspace, stdout=handle, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/runs", timeout=5)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"tunesmith ui exited: {log.read_text()}")
            time.sleep(0.5)
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    # A run the page started and a failed test left running: stop it by the pid its lock names.
    for run in (workspace / "runs").iterdir():
        holder = RunLock.holder(run)
        if holder and holder.split()[1].isdigit():
            os.kill(int(holder.split()[1]), signal.SIGTERM)
    assert "tunesmith ui: runs in runs; open http://localhost:" in log.read_text()


def _request(url: str, method: str = "GET", headers: dict | None = None, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def _csrf(base: str) -> str:
    _, _, page = _request(f"{base}/")
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_requests_from_another_origin_and_paths_outside_the_runs_are_refused(server, workspace):
    csrf = _csrf(server)
    json_headers = {"Content-Type": "application/json"}
    # A page elsewhere posting to the app: refused, with or without the token it cannot read.
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://evil.example", "X-CSRF-Token": csrf},
        {"Origin": server},  # its own origin but no CSRF token
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf},
    ):
        status, _, text = _request(
            f"{server}/api/launch/plan", "POST", {**json_headers, **headers}, {"base": "example:tiny.yaml"}
        )
        assert status == 403, (headers, text)
    status, _, text = _request(
        f"{server}/api/launch/plan",
        "POST",
        {**json_headers, "Origin": server, "X-CSRF-Token": csrf},
        {"base": "example:tiny.yaml", "values": {}},
    )
    assert status == 200 and "tunesmith train examples/tiny.yaml run_name=" in json.loads(text)["command"]
    # DNS rebinding: another name for this address.
    status, _, _ = _request(f"{server}/api/runs", headers={"Host": "evil.example"})
    assert status == 403

    # Files: inside a run only, never through a link, never by climbing out.
    status, headers, text = _request(f"{server}/runs/0/baseline/files/report.html")
    assert status == 200 and "<html" in text and "sandbox" in headers["Content-Security-Policy"]
    for path in (
        "runs/0/baseline/files/..%2F..%2Fsecret.txt",
        "runs/0/baseline/files/%2E%2E/%2E%2E/secret.txt",
        "runs/0/baseline/files/outside.txt",
        "runs/0/..%2Fexamples/files/tiny.yaml",
        "runs/1/baseline/files/report.html",
        "api/runs/0/..%2F..",
    ):
        status, _, text = _request(f"{server}/{path}")
        assert status in (403, 404), path
        assert "not for the page" not in text and "task: instruct" not in text


def test_a_typo_in_the_form_gives_the_cli_message(server, workspace):
    csrf = _csrf(server)
    status, _, text = _request(
        f"{server}/api/launch/plan",
        "POST",
        {"Content-Type": "application/json", "Origin": server, "X-CSRF-Token": csrf},
        {
            "base": "example:tiny.yaml",
            "values": {"train.max_steps": "-3"},
            "extra": "train.learnig_rate=1e-3",
        },
    )
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "train",
            "examples/tiny.yaml",
            "train.max_steps=-3",
            "train.learnig_rate=1e-3",
        ],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status == 400 and cli.returncode == 2
    message = json.loads(text)["error"]
    assert TYPO_MESSAGE in message and "config key `train.max_steps`: Input should be greater than" in message
    # The CLI's words exactly (whitespace aside: the terminal may wrap; a library may warn before it).
    assert " ".join(f"error: {message}".split()) in " ".join(cli.stderr.split())


def _get(base: str, path: str) -> dict:
    status, _, text = _request(f"{base}{path}")
    return json.loads(text) if status == 200 else {}


def test_a_run_started_in_a_terminal_shows_and_its_lock_decides(server, workspace):
    post = {"Content-Type": "application/json", "Origin": server, "X-CSRF-Token": _csrf(server)}
    terminal = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "train", "examples/tiny.yaml", "run_name=terminal"],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _until(lambda: _get(server, "/api/runs/0/terminal").get("step", 0) >= 2, 120, "the terminal's run")
        run = _get(server, "/api/runs/0/terminal")
        assert (
            run["state"] == "running"
            and run["holder"] == f"pid {terminal.pid} on host {socket.gethostname()}"
        )
        # The page neither starts nor resumes a run another process holds: nothing is written twice.
        status, _, text = _request(
            f"{server}/api/launch/start",
            "POST",
            post,
            {"base": "example:tiny.yaml", "values": {"run_name": "terminal"}},
        )
        assert status == 400 and f"is in use by pid {terminal.pid}" in json.loads(text)["error"]
        status, _, text = _request(f"{server}/api/runs/0/terminal/resume", "POST", post, {})
        assert status == 400 and f"is in use by pid {terminal.pid}" in json.loads(text)["error"]
        # Stop from the page: the terminal's process gets SIGTERM, checkpoints and exits 130.
        status, _, text = _request(f"{server}/api/runs/0/terminal/stop", "POST", post, {})
        assert status == 200 and json.loads(text)["signalled"] == run["holder"]
        output, _ = terminal.communicate(timeout=120)
        assert terminal.returncode == 130, output[-2000:]
        assert "training interrupted; checkpoint saved" in output
        stopped = _get(server, "/api/runs/0/terminal")
        assert stopped["state"] == "stopped" and stopped["checkpoints"] == [stopped["step"]]
    finally:
        if terminal.poll() is None:
            terminal.kill()
            terminal.wait()


def _step(page) -> int:
    text = page.inner_text("#step") if page.locator("#step").count() else ""
    return int(text) if text.isdigit() else 0


def _until(check, timeout: float = 60, what: str = "") -> None:
    """Poll `check()` from Python (the page's CSP allows no evaluated scripts, Playwright's included)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.25)


def _points(page) -> int:
    return int(page.get_attribute("#chart-loss path.series", "data-points") or 0)


def test_watch_launch_stop_resume_and_compare_in_a_browser(server, workspace):
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; make browser)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the dev extra)"
    )
    DOCS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Console errors other than the answers the test asks for (the typo's 400 is one).
        page.on(
            "console",
            lambda message: (
                errors.append(message.text)
                if message.type == "error" and "status of 400" not in message.text
                else None
            ),
        )

        # The runs list: the finished run with its headline metric before -> after.
        page.goto(f"{server}/#/")
        row = page.locator('tr[data-run="0/baseline"]')
        row.wait_for()
        assert row.get_attribute("data-state") == "finished"
        assert re.search(r"loss \d+\.\d+ → \d+\.\d+", row.inner_text())

        # The launch form: every key with its description and default, the equivalent command.
        page.click("#new-run")
        page.wait_for_selector("#f-train\\.learning_rate")
        assert page.locator(".field").count() > 60
        assert "peak learning rate" in page.inner_text('[data-key="train.learning_rate"]')
        assert page.input_value("#f-train\\.max_steps") == "100000"
        page.fill("#f-run_name", "live")
        _until(lambda: "run_name=live" in page.inner_text("#command"), what="the command line")
        assert page.inner_text("#command") == "tunesmith train examples/tiny.yaml run_name=live"
        # A typo: the CLI's message, and no start.
        page.fill("#extra", "train.learnig_rate=1e-3")
        page.wait_for_selector("#form-error .error")
        assert TYPO_MESSAGE in page.inner_text("#form-error") and page.is_disabled("#start")
        page.fill("#extra", "")
        _until(lambda: page.is_enabled("#start"), what="start enabled again")
        # The data preview (trained tokens marked) and the doctor's verdict, before starting.
        page.click("#check")
        page.wait_for_selector("#verdict", timeout=120_000)
        assert page.inner_text("#verdict") in ("ready", "ready with warnings")
        assert page.locator("#preview mark").count() > 0 and page.locator("#preview .untrained").count() > 0
        commands = page.inner_text("#preflight")
        assert "tunesmith data preview examples/tiny.yaml run_name=live" in commands
        assert "tunesmith data check data/train.jsonl --task instruct --model " in commands
        page.screenshot(path=str(DOCS / "ui-launch.png"))
        page.click("#start")

        # The run's page: the step count and the curve advance while it trains.
        page.wait_for_url(re.compile(r"#/run/0/live$"))
        _until(lambda: _step(page) >= 3, 120, "the first steps")
        first_step, first_points = _step(page), _points(page)
        _until(lambda: _step(page) >= first_step + 5, 60, "more steps")
        assert _step(page) > first_step and _points(page) > first_points >= 2
        assert page.inner_text("#state") == "running" and "null" not in page.inner_text("#live").splitlines()
        assert "tunesmith train examples/tiny.yaml run_name=live" in page.inner_text("body")
        page.screenshot(path=str(DOCS / "ui-run.png"))

        # Stop: SIGTERM, the loop writes its checkpoint and the run shows as stopped.
        page.click("#stop")
        _until(lambda: page.inner_text("#state") == "stopped", 60, "the stopped state")
        stopped_at = _step(page)
        checkpoints = sorted((workspace / "runs" / "live" / "checkpoints").glob("step-*"))
        assert checkpoints and int(checkpoints[-1].name.split("-")[1]) == stopped_at
        assert page.inner_text("#checkpoints") == str(stopped_at)
        assert "exit code 130" in page.inner_text("body")

        # Resume to a near end: the same run directory goes on from its checkpoint and finishes.
        page.fill("#resume-extra", f"train.max_steps={stopped_at + 4}")
        page.click("#resume")
        _until(lambda: page.inner_text("#state") == "finished", 120, "the finished state")
        assert _step(page) == stopped_at + 4
        records = [json.loads(line) for line in (workspace / "runs" / "live" / "metrics.jsonl").open()]
        steps = [r["step"] for r in records if "loss" in r and "event" not in r]
        assert steps == list(range(1, stopped_at + 5))  # each step once, resumed where it stopped
        assert page.is_visible("#report")

        # Compare the two runs: overlaid curves, the config difference, the metrics side by side.
        page.goto(f"{server}/#/")
        page.locator('tr[data-run="0/live"][data-state="finished"]').wait_for()
        page.check('input.pick[value="0/baseline"]')
        page.check('input.pick[value="0/live"]')
        page.screenshot(path=str(DOCS / "ui-runs.png"))
        page.click("#compare")
        page.wait_for_selector("#config-diff")
        assert page.locator("#chart-compare-loss path.series").count() >= 2
        differences = page.inner_text("#config-diff")
        assert "run_name" in differences and "train.max_steps" in differences
        assert "loss" in page.inner_text("#compare-metrics")
        page.screenshot(path=str(DOCS / "ui-compare.png"))

        # A new run from an existing run's config: its directory is taken until the name changes.
        page.goto(f"{server}/#/run/0/baseline")
        page.click("text=new run from this config")
        page.wait_for_selector("#form-error .error")
        assert page.input_value("#f-run_name") == "baseline"
        assert "already holds a run; choose another run_name" in page.inner_text("#form-error")
        page.fill("#f-run_name", "baseline-2")
        _until(lambda: "run_name=baseline-2" in page.inner_text("#command"), what="the command line")
        assert page.inner_text("#command") == "tunesmith train runs/baseline/config.yaml run_name=baseline-2"
        assert page.is_enabled("#start") and not page.locator("#form-error .error").count()
        browser.close()
    assert errors == []
    for name in ("runs", "launch", "run", "compare"):
        shot = DOCS / f"ui-{name}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < shot.stat().st_size < 400_000


def test_off_localhost_a_token_is_required(workspace):
    import threading

    import uvicorn

    from tunesmith.errors import UserError
    from tunesmith.webui.server import Settings, create_app

    with pytest.raises(UserError, match="give it a --token"):
        Settings([workspace / "runs"], host="0.0.0.0")
    settings = Settings([workspace / "runs"], host="127.0.0.1", token="s3cret-token")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: server.started, 30, "the server")
        assert _request(f"{base}/api/runs")[0] == 401
        assert _request(f"{base}/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, headers, _ = _request(f"{base}/?token=s3cret-token")
        assert status == 200 and "tunesmith_ui_token=s3cret-token" in headers["set-cookie"]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        cookie = {"Cookie": "tunesmith_ui_token=s3cret-token"}
        status, _, text = _request(f"{base}/api/runs", headers=cookie)
        assert status == 200 and "baseline" in text
        assert _request(f"{base}/api/runs", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_run_without_lock_summary_or_final_checkpoint_is_failed(tmp_path):
    from tunesmith.train.rundir import RunDir
    from tunesmith.webui.runs import run_state

    run = RunDir(tmp_path / "crashed")
    run.path.mkdir()
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_state(run, records) == "failed"
    (run.checkpoints / "step-000002").mkdir(parents=True)
    (run.checkpoints / "step-000002" / "trainer_state.json").write_text('{"step": 2}')
    assert run_state(run, records) == "stopped"  # SIGTERM's checkpoint at the last logged step
    assert run_state(run, records, exit_code=1) == "failed"  # the page saw its process crash
    assert run_state(run, records, exit_code=2) == "stopped"  # a refused resume wrote nothing
    run.summary.write_text("{}")
    assert run_state(run, records) == "finished"


def test_the_form_becomes_the_overrides_a_user_would_type(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.webui.launch import changed_overrides, form_values, schema_fields

    base = tmp_path / "base.yaml"
    base.write_text("task: instruct\ntrain:\n  learning_rate: 2.0e-4\n  max_steps: 10\n")
    fields = {item["key"]: item for item in schema_fields()}
    assert (
        fields["train.learning_rate"]["default"] == "0.0002" and fields["train.learning_rate"]["description"]
    )
    assert fields["data.packing"]["kind"] == "bool" and fields["adapter.method"]["choices"] == [
        "lora",
        "full",
        "qlora",
    ]
    values = form_values(load_config(base))
    assert changed_overrides(base, values) == []  # the form as it opens stands for the base config alone
    values.update(
        {
            "train.learning_rate": "2e-4",  # the same number written another way: no override
            "train.max_steps": "20",
            "run_name": "123",  # a string YAML would read as a number: quoted
            "data.train": "[a.jsonl, b.jsonl]",
            "data.packing": "false",
        }
    )
    overrides = changed_overrides(base, values)
    assert overrides == [
        "data.train=[a.jsonl, b.jsonl]",
        "data.packing=false",
        "train.max_steps=20",
        "run_name='123'",
    ]
    config = load_config(base, overrides)
    assert (
        config.run_name == "123"
        and config.data.train == ["a.jsonl", "b.jsonl"]
        and config.train.max_steps == 20
    )
