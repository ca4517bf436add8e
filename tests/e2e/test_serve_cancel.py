"""`serve` frees the model for the next client: a streaming client that disconnects stops its
generation at the next token (a real HTTP client closing its connection mid-stream, against a
real uvicorn server on a localhost port), and a port already in use is one line, exit code 2."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tunesmith.serve import Engine, build_app, listening_socket

MAX_TOKENS = 400  # the tiny model's context is 512: room for the prompt and a long answer


@pytest.fixture(scope="module")
def served(tiny_llama) -> Iterator[tuple[int, Engine]]:
    """A real server in this process (so the test can read the engine's counters)."""
    import uvicorn

    from tunesmith.models.inference import load_for_inference

    model, tokenizer = load_for_inference(tiny_llama, device="cpu")
    engine = Engine(model, tokenizer, "tiny")
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield port, engine
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()


def _request(port: int, body: dict) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        "POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    return connection.getresponse()


def test_a_stream_abandoned_mid_way_stops_its_generation_and_frees_the_model(served):
    port, engine = served
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0}
    # Control: uninterrupted, this request generates all MAX_TOKENS tokens (no early stop).
    answer = json.loads(_request(port, body).read())
    assert answer["usage"]["completion_tokens"] == MAX_TOKENS

    tokens_before, cancelled_before = engine.num_generated_tokens, engine.num_cancelled
    response = _request(port, {**body, "stream": True})
    assert response.status == 200
    first = response.readline()
    assert first.startswith(b"data: "), first
    response.close()  # the client goes away after the first event: its socket is closed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (engine.num_cancelled == cancelled_before or engine.lock.locked()):
        time.sleep(0.01)
    assert engine.num_cancelled == cancelled_before + 1
    assert not engine.lock.locked()
    generated = engine.num_generated_tokens - tokens_before
    assert generated < MAX_TOKENS // 4, f"{generated} tokens generated for a client that left"

    # The next client is served at once, not after the abandoned stream's MAX_TOKENS.
    short = json.loads(_request(port, {**body, "max_tokens": 2}).read())
    assert short["usage"]["completion_tokens"] == 2


def test_a_port_in_use_is_one_line_and_exit_code_2(tiny_llama, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunesmith",
                "serve",
                str(tiny_llama),
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"port {port}" in result.stderr and "--port" in result.stderr


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_one_line(tiny_llama, tmp_path, port):
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "serve", str(tiny_llama), "--port", port],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and f"--port {port}" in result.stderr, result.stderr


def test_a_whole_answer_abandoned_before_it_is_done_stops_its_generation(served):
    """A non-streaming client that gives up (closes its socket while waiting) frees the model too."""
    port, engine = served
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0}
    tokens_before, cancelled_before = engine.num_generated_tokens, engine.num_cancelled
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        deadline = time.monotonic() + 30
        while engine.num_generated_tokens == tokens_before and time.monotonic() < deadline:
            time.sleep(0.005)  # the answer has begun
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (engine.num_cancelled == cancelled_before or engine.lock.locked()):
        time.sleep(0.01)
    assert engine.num_cancelled == cancelled_before + 1 and not engine.lock.locked()
    generated = engine.num_generated_tokens - tokens_before
    assert generated < MAX_TOKENS // 2, f"{generated} tokens generated for a client that left"
    # Whole answers still come back whole.
    assert json.loads(_request(port, body).read())["usage"]["completion_tokens"] == MAX_TOKENS
