"""Base for provider fakes: a Starlette app served by uvicorn on 127.0.0.1:<ephemeral port> in a thread.

Every provider fake records each request it receives (`requests`), checks the auth header the real
provider expects, answers in the provider's wire format, and can be told to fail the next N
matching requests (`fail`, `rate_limit`) with the provider's own error envelope.

    with StripeFake() as stripe_fake:          # starts the server; stops it on exit
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_fake.url})

The server runs its own event loop in its own thread, so synchronous SDKs (DocuSign) and async
SDKs (slack_sdk, stripe, httpx) both work against it from a test's event loop.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived (monotonic clock)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body parsed as application/x-www-form-urlencoded (last value wins)."""
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Fault:
    """An injected failure: answer the next `times` requests whose path matches `path` with `response`."""

    path: re.Pattern[str] | None
    times: int
    response: ASGIApp
    method: str | None = None
    after: int = 0  # matching requests let through before the failure starts


@dataclass
class _Ids:
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next(self, prefix: str, width: int = 14) -> str:
        return f"{prefix}{next(self.counter):0{width}d}"


class FakeServer:
    """A provider fake. Subclasses define `routes()` and their wire format's `error()` (and `rate_limit_error()`)."""

    retry_after_header = "Retry-After"

    def __init__(self, tokens: tuple[str, ...] = ("test-token",)) -> None:
        self.tokens: set[str] = set(tokens)  # accepted credentials; discard one to make it "expired"
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.ids = _Ids()
        self._lock = threading.Lock()
        self._app = Starlette(routes=self.routes())
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.scheme = "http"

    # --- to override -------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """The provider's endpoints."""
        raise NotImplementedError

    def error(self, status: int, code: str, message: str) -> Response:
        """The provider's error envelope."""
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    def rate_limit_error(self, retry_after: int) -> Response:
        """The provider's 429 answer."""
        response = self.error(429, "rate_limited", "Too many requests")
        response.headers[self.retry_after_header] = str(retry_after)
        return response

    # --- failure injection -------------------------------------------------------------------
    def fail(
        self,
        status: int,
        code: str = "injected",
        message: str = "injected failure",
        *,
        path: str | None = None,
        method: str | None = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests matching `path` (a regex searched in the path) with an error."""
        response = self.error(status, code, message)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        self.inject(response, path=path, method=method, times=times)

    def rate_limit(self, retry_after: int, *, path: str | None = None, times: int = 1, after: int = 0) -> None:
        """Answer the next `times` matching requests — after letting `after` through — with the provider's 429
        and a Retry-After."""
        self.inject(self.rate_limit_error(retry_after), path=path, times=times, after=after)

    def inject(self, response: ASGIApp, *, path: str | None = None, method: str | None = None,
               times: int = 1, after: int = 0) -> None:
        """Answer the next `times` matching requests — after letting `after` through — with `response` (a
        Response, or any ASGI callable, which may change the fake's data first — e.g. to simulate a concurrent
        writer)."""
        with self._lock:
            self.faults.append(Fault(re.compile(path) if path else None, times, response, method, after))

    def _take_fault(self, method: str, path: str) -> ASGIApp | None:
        with self._lock:
            for fault in self.faults:
                if fault.path and not fault.path.search(path):
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault.response
        return None

    # --- inspection --------------------------------------------------------------------------
    def calls(self, path: str | None = None, method: str | None = None) -> list[Recorded]:
        """Recorded requests whose path matches the regex `path` (and `method`)."""
        pattern = re.compile(path) if path else None
        return [r for r in list(self.requests)
                if (pattern is None or pattern.search(r.path)) and (method is None or r.method == method)]

    @property
    def url(self) -> str:
        """Base URL of the running server (no trailing slash)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # --- ASGI: record, inject, dispatch ------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        recorded = Recorded(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(scope["query_string"].decode(), keep_blank_values=True),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
        )
        self.requests.append(recorded)
        fault = self._take_fault(recorded.method, recorded.path)
        if fault is not None:
            await fault(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> Self:
        """Start serving on an ephemeral port (HTTPS when a certificate is given)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.scheme = "https" if ssl_certfile else "http"
        config = uvicorn.Config(self, log_level="warning", lifespan="off", access_log=False,
                                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for clients' idle keep-alive connections
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def body_params(request: Request) -> dict[str, Any]:
    """A request's parameters from a JSON or form body (Slack accepts both)."""
    raw = await request.body()
    if not raw:
        return {}
    if request.headers.get("content-type", "").startswith("application/json"):
        return json.loads(raw)
    return {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None
