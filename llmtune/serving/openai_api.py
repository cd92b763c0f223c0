"""The OpenAI-compatible HTTP API of `llmtune serve`: FastAPI routes over one Engine.

    GET  /v1/models                  the one served model
    POST /v1/chat/completions        messages through the run's chat template (JSON, or SSE with stream)
    POST /v1/completions             raw text continuation (JSON, or SSE with stream)
    GET  /health                     liveness, without the API key (for a load balancer's probe)

Why FastAPI and not transformers' own `transformers serve` (transformers/cli/serving/): that server loads
models by hub id per request through its ModelManager, where llmtune serves one model it has loaded itself
(an adapter run, a GGUF, an export) with that run's template and stop tokens; it has no API key, body
limit or queue bound. Its choices were followed where they apply: sampling fields left unset take the
model's generation_config values, and a temperature of 0 is greedy.

Safety: every error is an OpenAI-style JSON body (`{"error": {"message", "type", "param", "code"}}`), 400
for a malformed request (FastAPI's 422 is mapped to 400, as OpenAI answers), 401 without the key, 404 for
another model id, 413 for a body over the limit, 503 when the queue is full, 500 (logged) for a failure
inside; the server keeps serving after each. Requests take turns on the model in arrival order (an
asyncio lock, which is FIFO), so answers never mix; a streaming client that hangs up cancels its
generation at the next token and frees the model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from llmtune.serving.engine import Engine, Sampling
from llmtune.serving.openai_schema import ChatRequest, CompletionRequest, Refused

log = logging.getLogger("llmtune")


@dataclass
class Limits:
    max_tokens: int = 4096
    max_body_bytes: int = 1_048_576
    max_queue: int = 64


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Turns:
    """One request on the model at a time, in arrival order, with at most `max_waiting` waiting."""

    def __init__(self, max_waiting: int):
        self.lock = asyncio.Lock()
        self.max_waiting = max_waiting
        self.waiting = 0

    def check(self) -> None:
        if self.waiting >= self.max_waiting:
            raise ApiError(
                503,
                f"the server is busy: {self.waiting} requests are waiting for the model (--max-queue "
                f"{self.max_waiting}); retry later.",
                kind="server_error",
                code="server_busy",
            )

    @asynccontextmanager
    async def turn(self):
        self.check()
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()


# ------------------------------------------------------------------------------------------ middleware
class Guard:
    """API key and body size, checked before FastAPI parses anything (pure ASGI: a streaming response
    passes through untouched, which Starlette's BaseHTTPMiddleware does not guarantee)."""

    OPEN_PATHS = ("/health",)

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in self.OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                message = "a valid API key is required: send 'Authorization: Bearer KEY'."
                return await _send_json(
                    send, 401, error_body(message, "invalid_request_error", None, "invalid_api_key")
                )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _send_json(send, 413, error_body(self._too_large(), "invalid_request_error"))
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a chunked body has no content-length
                    from starlette.exceptions import HTTPException

                    # FastAPI re-raises an HTTPException from reading the body (anything else becomes
                    # "error parsing the body"); the handler turns it into the JSON error.
                    raise HTTPException(413, self._too_large())
            return message

        return await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return (
            f"the request body is over this server's limit of {self.max_body_bytes} bytes (--max-body-bytes)."
        )


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# ------------------------------------------------------------------------------------------ the app
def build_app(engine: Engine, *, served_name: str, api_key: str | None = None, limits: Limits | None = None):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    turns = Turns(limits.max_queue)
    created = int(time.time())
    app = FastAPI(title="llmtune serve", docs_url=None, redoc_url=None, openapi_url=None)

    def fail(exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return fail(exc)

    @app.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return fail(ApiError(400, str(exc), param=exc.param, code="unsupported_parameter"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return fail(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return fail(ApiError(exc.status_code, str(exc.detail), kind=kind))

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        log.exception("serve: a request failed inside the server")
        return fail(
            ApiError(500, f"internal error ({type(exc).__name__}); see the server log.", kind="server_error")
        )

    def model_card() -> dict:
        return {"id": served_name, "object": "model", "created": created, "owned_by": "llmtune"}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != served_name:
            raise _unknown_model(model_id, served_name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        body.refuse_unsupported()
        _check_model(body.model, served_name)
        ids = _encode(engine, body.plain_messages())
        sampling = _sampling(engine, body, body.requested_tokens(), len(ids), limits, "max_tokens")
        if body.stream:
            turns.check()
            return StreamingResponse(
                _chat_events(engine, turns, ids, sampling, body, served_name), media_type="text/event-stream"
            )
        async with turns.turn():
            answer = await _run(engine, ids, sampling, strip=True)
        return {
            "id": _id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": _usage(answer),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        body.refuse_unsupported()
        _check_model(body.model, served_name)
        ids = engine.encode_text(body.text())
        sampling = _sampling(engine, body, body.max_tokens, len(ids), limits, "max_tokens")
        if body.stream:
            turns.check()
            return StreamingResponse(
                _completion_events(engine, turns, ids, sampling, body, served_name),
                media_type="text/event-stream",
            )
        async with turns.turn():
            answer = await _run(engine, ids, sampling, strip=False)
        return {
            "id": _id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [
                {"index": 0, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}
            ],
            "usage": _usage(answer),
        }

    return Guard(app, api_key, limits.max_body_bytes)


# ------------------------------------------------------------------------------------------ requests
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _validation_error(exc) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON{': ' + str(detail) if detail else ''}.")
    loc = []
    for part in first.get("loc", ()):
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            break  # pydantic names the union member it tried (content.str); the field is what matters
        if part != "body":
            loc.append(str(part))
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "a required field is missing"
    more = len(exc.errors()) - 1
    suffix = f" ({more} more problem{'s' if more > 1 else ''} in this request)" if more > 0 else ""
    return ApiError(400, f"{param or 'body'}: {message}.{suffix}", param=param)


def _unknown_model(given: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"model {given!r} is not served here; this server serves {served!r} (GET /v1/models).",
        param="model",
        code="model_not_found",
        kind="not_found_error",
    )


def _check_model(given: str | None, served: str) -> None:
    if given is not None and given != served:
        raise _unknown_model(given, served)


def _encode(engine: Engine, messages: list[dict]) -> list[int]:
    from jinja2.exceptions import TemplateError

    try:
        return engine.encode_chat(messages)
    except TemplateError as exc:  # e.g. a template that requires alternating user/assistant turns
        raise ApiError(
            400, f"messages: the model's chat template refused them: {exc}", param="messages"
        ) from None


def _sampling(
    engine: Engine, body, requested: int | None, prompt_tokens: int, limits: Limits, key: str
) -> Sampling:
    room = engine.room(prompt_tokens)
    if room is not None and room <= 0:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens, which fills this model's context of {engine.context} tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and requested > limits.max_tokens:
        raise ApiError(
            400,
            f"{key} {requested} is over this server's limit of {limits.max_tokens} (--max-tokens-limit).",
            param=key,
        )
    if requested is not None and room is not None and requested > room:
        raise ApiError(
            400,
            f"this model's context is {engine.context} tokens, but {prompt_tokens + requested} were requested "
            f"({prompt_tokens} in the prompt, {requested} for the completion); lower {key} or shorten the prompt.",
            param=key,
            code="context_length_exceeded",
        )
    tokens = requested if requested is not None else min(limits.max_tokens, room or limits.max_tokens)
    return Sampling(
        max_new_tokens=tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_strings(),
    )


async def _run(engine: Engine, ids: list[int], sampling: Sampling, *, strip: bool):
    from starlette.concurrency import run_in_threadpool

    started = time.perf_counter()
    answer = await run_in_threadpool(engine.complete, ids, sampling, None, strip=strip)
    _log(answer, time.perf_counter() - started)
    return answer


def _log(answer, seconds: float) -> None:
    log.info(
        "serve: %d prompt + %d completion tokens in %.2f s (%.1f tokens/s), %s",
        answer.prompt_tokens,
        answer.completion_tokens,
        seconds,
        answer.completion_tokens / seconds if seconds > 0 else 0.0,
        answer.finish_reason,
    )


def _usage(answer) -> dict:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _step(stream):
    try:
        return False, next(stream)
    except StopIteration as done:
        return True, done.value


async def _deltas(engine: Engine, turns: Turns, ids, sampling: Sampling, strip: bool):
    """(delta, None) per piece of text, then (None, Answer); the model's turn is held throughout, and a
    client that goes away (the task is cancelled) cancels the generation."""
    import anyio

    cancel = threading.Event()
    async with turns.turn():
        stream = engine.stream(ids, sampling, cancel, strip=strip)
        started = time.perf_counter()
        try:
            while True:
                done, value = await anyio.to_thread.run_sync(_step, stream)
                if done:
                    _log(value, time.perf_counter() - started)
                    yield None, value
                    return
                yield value, None
        finally:
            cancel.set()
            await anyio.to_thread.run_sync(stream.close)


async def _chat_events(engine, turns, ids, sampling, body: ChatRequest, served_name: str):
    ident, created = _id("chatcmpl"), int(time.time())

    def chunk(delta: dict, finish=None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served_name}
        return _sse({**base, "choices": [choice] if delta is not None else [], **extra})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for delta, answer in _deltas(engine, turns, ids, sampling, strip=True):
            if delta is not None:
                yield chunk({"content": delta})
            else:
                yield chunk({}, answer.finish_reason)
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk(None, usage=_usage(answer))
    except Exception as exc:  # the status line is sent already: the error goes in the stream
        log.exception("serve: a streamed generation failed")
        yield _sse(error_body(f"internal error ({type(exc).__name__}); see the server log.", "server_error"))
    yield "data: [DONE]\n\n"


async def _completion_events(engine, turns, ids, sampling, body: CompletionRequest, served_name: str):
    ident, created = _id("cmpl"), int(time.time())

    def chunk(text: str | None, finish=None, **extra) -> str:
        base = {"id": ident, "object": "text_completion", "created": created, "model": served_name}
        choices = (
            [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        )
        return _sse({**base, "choices": choices, **extra})

    try:
        async for delta, answer in _deltas(engine, turns, ids, sampling, strip=False):
            if delta is not None:
                yield chunk(delta)
            else:
                yield chunk("", answer.finish_reason)
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk(None, usage=_usage(answer))
    except Exception as exc:
        log.exception("serve: a streamed generation failed")
        yield _sse(error_body(f"internal error ({type(exc).__name__}); see the server log.", "server_error"))
    yield "data: [DONE]\n\n"
