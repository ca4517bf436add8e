"""`tunesmith serve` as a real subprocess on a free localhost port, driven by the official
`openai` client: plain and streaming answers equal a direct generate, malformed requests get
OpenAI-shaped 4xx errors and the server stays up, 8 concurrent clients each get their own answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunesmith import api

from ..conftest import ASSETS
from ..reliability.helpers import instruct_file, make_config

openai = pytest.importorskip("openai")
API_KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    # The embedded base model writes real English, so greedy answers are not near-ties.
    root = tmp_path_factory.mktemp("serve-run")
    config = make_config(ASSETS / "base-model", instruct_file(root), root / "runs", train__max_steps=2)
    return api.train(config)


@pytest.fixture(scope="module")
def server(lora_run, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {**os.environ, "TUNESMITH_API_KEY": API_KEY}
    command = [sys.executable, "-m", "tunesmith", "serve", str(lora_run.run_dir), "--port", str(port)]
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*command, "--device", "cpu", "--name", "tiny"], stdout=handle, stderr=handle, env=env
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/v1/models", timeout=2)
        except urllib.error.HTTPError:
            break  # 401 without the key: it is up
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"server exited:\n{log.read_text()}")
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"server did not start:\n{log.read_text()}")
    yield base, process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(lora_run):
    loaded = api.load_for_inference(str(lora_run.run_dir), device="cpu")

    def reply(prompt: str, max_tokens: int) -> str:
        return api.generate(str(lora_run.run_dir), prompt, max_new_tokens=max_tokens, loaded=loaded)

    return reply


def _post(base: str, path: str, body: bytes, key: str | None = API_KEY) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}{path}", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_plain_and_streaming_equal_a_direct_generate(client, direct):
    prompt = "Repeat the word red 2 times."
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
    )
    text = answer.choices[0].message.content
    assert text.strip() == direct(prompt, 12)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert 0 < answer.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_content_parts_and_the_developer_role_are_understood(client, direct):
    prompt = "Repeat the word blue 2 times."
    parts = [{"type": "text", "text": "Repeat the word "}, {"type": "text", "text": "blue 2 times."}]
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.content.strip() == direct(prompt, 8)
    with_developer = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": prompt}],
        max_tokens=8,
        temperature=0,
    )
    assert isinstance(with_developer.choices[0].message.content, str)


def test_completions_plain_and_streaming(client):
    plain = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    streamed = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
    )
    assert plain.choices[0].text and "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    assert plain.usage.completion_tokens == 8 and plain.choices[0].finish_reason == "length"


def test_stop_strings_cut_the_answer(client):
    full = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    text = full.choices[0].text
    word = text.split()[2]
    cut = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0, stop=[word]
    )
    assert cut.choices[0].text == text[: text.index(word)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "tiny"}', 400, "messages"),
        (b'{"model": "tiny", "messages": []}', 400, "messages"),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
            400,
            "max_tokens",
        ),
        (b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}',
            400,
            "seed",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
            400,
            "messages.0.content",
        ),
    ],
)
def test_malformed_requests_get_openai_shaped_4xx_errors(server, client, body, status, param):
    code, payload = _post(server[0], "/v1/chat/completions", body)
    assert code == status
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]
    assert payload["error"]["param"] == param
    assert server[1].poll() is None
    assert [m.id for m in client.models.list()] == ["tiny"]  # still serving


def test_the_api_key_is_required(server):
    code, payload = _post(server[0], "/v1/completions", b'{"model": "tiny", "prompt": "hi"}', key=None)
    assert code == 401 and payload["error"]["code"] == "invalid_api_key"
    code, _ = _post(server[0], "/v1/completions", b'{"model": "tiny", "prompt": "hi"}', key="wrong")
    assert code == 401


def test_eight_concurrent_clients_each_get_their_own_answer(client, direct):
    words = ["red", "blue", "green", "small", "large", "happy", "quiet", "fast"]
    requests = [(f"Repeat the word {word} {i % 3 + 1} times.", 4 + i) for i, word in enumerate(words)]

    def ask(index: int) -> str:
        prompt, max_tokens = requests[index]
        messages = [{"role": "user", "content": prompt}]
        if index % 2:  # half of them stream
            stream = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=max_tokens, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream)
        answer = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=max_tokens, temperature=0
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(8)))
    expected = [direct(prompt, max_tokens) for prompt, max_tokens in requests]
    assert [a.strip() for a in answers] == expected
    assert len(set(expected)) > 1  # different prompts, different answers: a mix-up would show
