"""`llmtune serve`: an OpenAI-compatible HTTP server for one model, with the chat template and stop tokens
it was trained with.

    llmtune serve --model runs/quickstart                       (http://127.0.0.1:8000/v1)
    llmtune serve --model runs/quickstart --host 0.0.0.0 --api-key "$KEY"

Read top to bottom: settings checked → the address bound (a port in use is a clear error, before the model
loads) → the model loaded (serving/engine.py) → the app (serving/openai_api.py) run by uvicorn on that
socket until Ctrl-C. It writes no folder: the model is only read.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")


def run(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_name: str | None = None,
    max_tokens_limit: int = 4096,
    max_body_bytes: int = 1_048_576,
    max_queue: int = 64,
    dtype: str = "auto",
    hub: str = "auto",
) -> None:
    from llmtune.serving.openai_api import Limits

    _check(port, api_key, max_tokens_limit, max_body_bytes, max_queue, dtype, hub)
    limits = Limits(max_tokens=max_tokens_limit, max_body_bytes=max_body_bytes, max_queue=max_queue)
    sock = bind(host, port)
    try:
        from llmtune.serving.engine import load_engine

        engine = load_engine(model, dtype=dtype, hub=hub)
        name = served_name or model
        _serve(engine, sock, name, api_key, limits)
    finally:
        sock.close()


def _check(port, api_key, max_tokens_limit, max_body_bytes, max_queue, dtype, hub) -> None:
    from llmtune.inference import model_flag_problems

    if not 0 <= port <= 65535:
        raise LlmtuneError(f"--port {port}: a port is 0-65535 (0 picks a free one).")
    for flag, value in (
        ("--max-tokens-limit", max_tokens_limit),
        ("--max-body-bytes", max_body_bytes),
        ("--max-queue", max_queue),
    ):
        if value < 1:
            raise LlmtuneError(f"{flag} {value}: must be at least 1.")
    if api_key is not None and not api_key.strip():
        raise LlmtuneError("--api-key is empty: give a key, or leave the flag out to serve without one.")
    problems = model_flag_problems(dtype, hub)
    if problems:
        raise LlmtuneError("; ".join(problems) + ".")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a port in use or a wrong address is a one-line error
    before the model loads (uvicorn is handed the socket)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LlmtuneError(f"--host {host!r}: not an address of this machine ({exc.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LlmtuneError(
            f"cannot listen on {host}:{port}: {exc.strerror}.",
            hint="Another server may hold the port: pick another with --port (0 picks a free one).",
        ) from None
    return sock


def _serve(engine, sock: socket.socket, name: str, api_key: str | None, limits) -> None:
    import uvicorn

    from llmtune.serving.openai_api import build_app

    host, port = sock.getsockname()[:2]
    if not _loopback(host) and api_key is None:
        log.warning(
            "warning: serving on %s without --api-key: anyone who can reach this machine can use the model.",
            host,
        )
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    template = "its chat template" if engine.has_template else "no chat template (messages as plain text)"
    print(f"llmtune serve: {name} ({engine.kind}, {template}) at {url}/v1", flush=True)
    auth = ' -H "Authorization: Bearer $LLMTUNE_API_KEY"' if api_key else ""
    print(
        f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f'-d \'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'',
        flush=True,
    )
    app = build_app(engine, served_name=name, api_key=api_key, limits=limits)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal
        pass
    print("llmtune serve: stopped.", flush=True)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
