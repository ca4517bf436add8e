"""An OpenAI-compatible HTTP server for a trained run: `/v1/models`, `/v1/chat/completions`
(with server-sent-event streaming) and `/v1/completions`, on FastAPI + uvicorn.

Chat requests go through the chat template the run trained with and stop on its end-of-turn
tokens; a LoRA run is served as base + adapter (nothing is merged). The model answers one
request at a time (a lock around every model call), so concurrent clients queue and never
share a KV cache. A bad request is a 4xx JSON error in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`), never a crash; the server binds localhost
unless told otherwise, and with an API key every request must carry `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hmac
import inspect
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import DynamicCache

from tunesmith.errors import UserError
from tunesmith.progress import NoProgress, Progress

DEFAULT_HOST = "127.0.0.1"  # localhost only: exposing a model is the user's explicit choice
DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 256
DISCONNECT_POLL_S = 0.2  # how often a non-streaming request checks whether its client is still there
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


# Requests (unknown OpenAI fields are accepted and ignored, as OpenAI-compatible servers do)


class TextPart(BaseModel):
    type: Literal["text"]  # a text-only model: image or audio parts are a 400
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        """The canonical {role, content}: `developer` is OpenAI's newer name for `system`."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # what torch's generator takes
    n: int = Field(1, ge=1, le=1)  # one choice per request
    stream: bool = False


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None


class ApiError(Exception):
    """A request the server refuses: turned into OpenAI's error shape with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code=None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# The engine: one model, one lock


def unwrap_forward(model: Any) -> Any:
    """The causal LM's own forward (a PEFT model forwards its keyword arguments to it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.forward


class Engine:
    """The loaded model, its tokenizer, the trained chat template and stop tokens; every model
    call holds `lock`, so requests never interleave."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        from tunesmith.data.templates import end_of_turn_ids, resolve_chat_template

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.template = resolve_chat_template(tokenizer)
        self.chat_stop_ids = set(end_of_turn_ids(tokenizer, self.template))
        self.text_stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        config = getattr(model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None) or 2048
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        # Counted under the lock: every token generated, and the generations stopped because
        # their client went away.
        self.num_generated_tokens = 0
        self.num_cancelled = 0
        # transformers renamed `past_key_values` to `cache` during 5.x; take whichever this one has.
        forward = inspect.signature(unwrap_forward(model)).parameters
        self.cache_argument = "cache" if "cache" in forward else "past_key_values"

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        from tunesmith.data.templates import encode_prompt

        return encode_prompt(self.tokenizer, self.template, messages)

    def text_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def check_length(self, prompt_ids: list[int], sampling: Sampling) -> None:
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if len(prompt_ids) + sampling.max_tokens > self.context:
            raise ApiError(
                400,
                f"this model's context is {self.context} tokens; the prompt has {len(prompt_ids)} and "
                f"max_tokens asks for {sampling.max_tokens} more: shorten the prompt or lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )

    @torch.no_grad()
    def tokens(
        self, prompt_ids: list[int], sampling: Sampling, stop_ids: set[int], cancel: threading.Event
    ) -> Iterator[int | str]:
        """The generated token ids one by one (KV cache), then the finish reason ('stop' or
        'length'). The caller holds the lock."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**63))
        input_ids = torch.tensor([prompt_ids], device=self.device)
        cache = DynamicCache()  # updated in place by each forward
        for _ in range(sampling.max_tokens):
            if cancel.is_set():
                self.num_cancelled += 1
                return
            output = self.model(input_ids=input_ids, **{self.cache_argument: cache}, use_cache=True)
            token = self._pick(output.logits[0, -1].float().cpu(), sampling, generator)
            self.num_generated_tokens += 1
            if token in stop_ids:
                yield "stop"
                return
            yield token
            input_ids = torch.tensor([[token]], device=self.device)
        yield "length"

    @staticmethod
    def _pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
        if sampling.temperature == 0:
            return int(logits.argmax())
        probabilities = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            ordered, order = probabilities.sort(descending=True)
            keep = ordered.cumsum(0) - ordered < sampling.top_p  # the smallest set reaching top_p
            probabilities = torch.zeros_like(probabilities).scatter(0, order[keep], ordered[keep])
        return int(torch.multinomial(probabilities, 1, generator=generator))

    def pieces(
        self, prompt_ids: list[int], sampling: Sampling, stop_ids: set[int], cancel: threading.Event
    ) -> Iterator[tuple[str, str | None, int]]:
        """(new text, finish reason or None, tokens so far): text is released only once it is
        whole (no half UTF-8 characters) and cannot be the start of a stop string."""
        generated: list[int] = []
        sent = 0
        for item in self.tokens(prompt_ids, sampling, stop_ids, cancel):
            finish = item if isinstance(item, str) else None
            if finish is None:
                generated.append(int(item))
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = _first_stop(text, sampling.stop)
            if cut is not None:
                yield text[sent:cut], "stop", len(generated)
                return
            if finish is not None:
                yield text[sent:], finish, len(generated)
                return
            ready = len(text) - _held_back(text, sampling.stop)
            if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                ready = min(ready, len(text) - 1)
            if ready > sent:
                yield text[sent:ready], None, len(generated)
                sent = ready


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return min(positions) if positions else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                longest = max(longest, length)
                break
    return longest


# The app


def _sampling(request: _Sampling, max_tokens: int | None) -> Sampling:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop sequences", param="stop")
    return Sampling(max_tokens or DEFAULT_MAX_TOKENS, request.temperature, request.top_p, stops, request.seed)


def _field_path(location: tuple) -> str | None:
    """The dotted field path of a validation error ("messages.0.role"), without the leading "body"
    and without the union member pydantic names ("str", "list[TextPart]")."""
    parts = []
    for part in location[1:]:
        if isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def build_app(engine: Engine, api_key: str | None = None) -> Any:
    """The FastAPI app serving `engine`."""
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(
                    error_body("missing or wrong API key", "invalid_request_error", code="invalid_api_key"),
                    status_code=401,
                )
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_body("the request body is not valid JSON", "invalid_request_error"), 400
            )
        param = _field_path(first.get("loc", ()))
        # A union field fails once per member: say all of what was expected, once.
        reasons = dict.fromkeys(
            e.get("msg", "") for e in exc.errors() if _field_path(e.get("loc", ())) == param
        )
        message = (
            f"{param + ': ' if param else ''}{'; or '.join(r for r in reasons if r) or 'invalid request'}"
        )
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failure(_: Request, exc: Exception) -> Any:
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), status_code=500)

    def check_model(name: str) -> None:
        if name != engine.name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server has {engine.name!r}",
                param="model",
                code="model_not_found",
            )

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": engine.name, "object": "model", "created": int(time.time()), "owned_by": "tunesmith"}
        return {"object": "list", "data": [card]}

    async def chat(request: ChatRequest, raw: Any) -> Any:
        check_model(request.model)
        sampling = _sampling(request, request.max_completion_tokens or request.max_tokens)
        prompt_ids = engine.chat_prompt([m.as_message() for m in request.messages])
        engine.check_length(prompt_ids, sampling)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": engine.name}
        if request.stream:
            return _stream(engine, prompt_ids, sampling, engine.chat_stop_ids, meta, chat=True)
        text, finish, count = await _complete(raw, engine, prompt_ids, sampling, engine.chat_stop_ids)
        message = {"role": "assistant", "content": text}
        return {
            **meta,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(prompt_ids, count),
        }

    async def completions(request: CompletionRequest, raw: Any) -> Any:
        check_model(request.model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise ApiError(400, "one prompt per request", param="prompt")
        sampling = _sampling(request, request.max_tokens or 16)  # OpenAI's default for completions
        prompt_ids = engine.text_prompt(prompts[0])
        engine.check_length(prompt_ids, sampling)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": engine.name}
        if request.stream:
            return _stream(engine, prompt_ids, sampling, engine.text_stop_ids, meta, chat=False)
        text, finish, count = await _complete(raw, engine, prompt_ids, sampling, engine.text_stop_ids)
        return {
            **meta,
            "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(prompt_ids, count),
        }

    # The raw request (to notice a client that leaves) is annotated here: FastAPI reads annotations
    # from the module's globals, where the optional fastapi import is not.
    for path, endpoint in (("/v1/chat/completions", chat), ("/v1/completions", completions)):
        endpoint.__annotations__["raw"] = Request
        app.post(path)(endpoint)

    def _stream(
        engine: Engine, prompt_ids: list[int], sampling: Sampling, stop_ids: set[int], meta: dict, chat: bool
    ) -> Any:
        object_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {**meta, "object": object_name, "choices": [choice]}

        pieces, cancel = _generate_in_thread(engine, prompt_ids, sampling, stop_ids)

        async def events() -> AsyncIterator[str]:
            # An async generator: when the client disconnects, Starlette cancels the response
            # while it waits here for the next piece, and `finally` stops the generation at its
            # next token (a sync generator would be left running in its thread to max_tokens).
            try:
                if chat:
                    yield _sse(chunk(None, None, first=True))
                while (
                    item := await anyio.to_thread.run_sync(pieces.get, abandon_on_cancel=True)
                ) is not None:
                    if isinstance(item, BaseException):
                        yield _sse(error_body(f"{type(item).__name__}: {item}", "server_error"))
                        break
                    text, finish, _ = item
                    if text or finish:
                        yield _sse(chunk(text, finish))
                yield _sse("[DONE]")
            finally:
                cancel.set()

        # The background task runs after the response, also after a disconnect cancelled it.
        return StreamingResponse(
            events(), media_type="text/event-stream", background=BackgroundTask(cancel.set)
        )

    return app


def _usage(prompt_ids: list[int], count: int) -> dict[str, int]:
    return {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": count,
        "total_tokens": len(prompt_ids) + count,
    }


async def _client_gone(raw: Any) -> bool:
    """Whether the client of this request disconnected. Starlette's `is_disconnected` never sees it
    behind an `http` middleware (its receive is wrapped in a task group that a pre-cancelled scope
    stops before it looks), so wait for the next message a few milliseconds instead."""
    import anyio

    with anyio.move_on_after(0.005):
        return (await raw.receive()).get("type") == "http.disconnect"
    return False


async def _complete(
    raw: Any, engine: Engine, prompt_ids: list[int], sampling: Sampling, stop_ids: set[int]
) -> tuple[str, str, int]:
    """A whole answer, generated in its own thread. A client that disconnects before it is done
    stops the generation at the next token (checked every DISCONNECT_POLL_S while waiting), so the
    model is free for the next client instead of busy to max_tokens for nobody."""
    import anyio

    pieces, cancel = _generate_in_thread(engine, prompt_ids, sampling, stop_ids)
    text, finish, count = "", "length", 0
    checked = time.monotonic()
    try:
        while True:
            if time.monotonic() - checked >= DISCONNECT_POLL_S:
                if await _client_gone(raw):
                    break  # nobody will read the answer
                checked = time.monotonic()
            try:
                item = await anyio.to_thread.run_sync(
                    functools.partial(pieces.get, timeout=DISCONNECT_POLL_S)
                )
            except queue.Empty:
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            piece, reason, so_far = item
            text, finish, count = text + piece, reason or finish, so_far
    finally:
        cancel.set()
    return text, finish, count


def _generate_in_thread(
    engine: Engine, prompt_ids: list[int], sampling: Sampling, stop_ids: set[int]
) -> tuple[queue.Queue, threading.Event]:
    """Generation for a streaming response in its own thread, which holds the lock throughout;
    pieces arrive on the queue, then None."""
    pieces: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            with engine.lock:
                for item in engine.pieces(prompt_ids, sampling, stop_ids, cancel):
                    pieces.put(item)
        except Exception as exc:  # reported to the client as a final error event
            pieces.put(exc)
        finally:
            pieces.put(None)

    threading.Thread(target=work, daemon=True, name="tunesmith-generate").start()
    return pieces, cancel


def load_engine(model_or_run: str, device: str = "auto", name: str | None = None) -> Engine:
    """The engine for a run, adapter or model directory (an adapter stays unmerged)."""
    from tunesmith.models.inference import load_for_inference
    from tunesmith.tasks.trained import refuse_chat
    from tunesmith.train.rundir import resolve_trained

    target = resolve_trained(model_or_run)
    refuse_chat(target)  # a classifier does not chat: the error names `predict`
    model, tokenizer = load_for_inference(target, model_or_run, device=device)
    path = Path(model_or_run).expanduser()
    return Engine(model, tokenizer, name or (path.resolve().name if path.exists() else model_or_run))


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port; a port in use (or an address this machine does not have)
    is a UserError naming it, before any model is loaded."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a TCP port is between 0 and 65535 (0 picks a free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart right after a stop
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use (another server?); stop it or choose another with --port"
            ) from None
        raise UserError(
            f"cannot listen on {host} port {port} ({exc.strerror or exc}); choose another --host or --port"
        ) from None
    return sock


def serve(
    model_or_run: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    device: str = "auto",
    name: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Load the model and serve it until interrupted; `progress` hears where it listens."""
    import uvicorn

    sock = listening_socket(host, port)
    with sock:
        engine = load_engine(model_or_run, device=device, name=name)
        bound = sock.getsockname()[1]  # --port 0: the port the system chose
        address = f"[{host}]" if ":" in host else host
        (progress or NoProgress()).message(
            f"serving {engine.name!r} on http://{address}:{bound}/v1 (Ctrl+C stops)"
        )
        config = uvicorn.Config(build_app(engine, api_key), log_level="warning", access_log=False)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how a server is stopped
            uvicorn.Server(config).run(sockets=[sock])
