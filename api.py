"""The HTTP API: /v1 admin and CRM API, /webhooks, /oauth, /healthz, /readyz, /metrics, /codec; /console, /docs."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp
from temporalio.api.common.v1 import Payloads

import console
from connectors.catalogue import import_action_modules
from hub import bounded, problems
from hub.deps import AdminKey, HubDep
from hub.idempotency import IdempotencyMiddleware
from hub.problems import problem_response
from hub.runtime import Hub, TemporalUnavailable
from hub.sessions import PREFIX as SESSION_PREFIX
from hub.settings import get_settings
from hub.telemetry import RequestTelemetry
from hub.vault import EncryptionCodec
from routes import ROUTERS
from webhooks.relay import relay_running
from webhooks.router import WebhookDispatch, serve_delivery

log = logging.getLogger("hub.api")
CODEC_HEADERS = "Authorization, Content-Type, X-Namespace"


class BodySizeLimit:
    """ASGI middleware: answer 413 for a request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app, limit: int) -> None:  # noqa: ANN001
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_big(scope, receive, send)
        seen = 0

        async def limited_receive():  # noqa: ANN202
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._too_big(scope, receive, send)

    async def _too_big(self, scope, receive, send) -> None:  # noqa: ANN001
        await problem_response(413, f"request body exceeds {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


class EvaluationAdmission:
    """ASGI middleware: a validation or dry-run that ``hub.bounded`` would refuse for its org (another in flight,
    CPU budget spent) gets its 429 before its body is parsed, so a tenant flooding them costs no parsing. Only API
    keys resolved from the key cache are judged here; anything else goes on to the route, which decides."""

    PATHS = re.compile(r"/v1/(rules(/[^/]+)?:test|resources:validate|rules:validate)")
    REFUSAL_DELAY = 1.0  # seconds a refusal is held (waiting costs the hub nothing)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["method"] == "POST" and self.PATHS.fullmatch(scope["path"]):
            refused = await self._refusal(scope)
            if refused is not None:
                await self._drain(receive, scope["app"].max_body_bytes)
                await asyncio.sleep(self.REFUSAL_DELAY)  # a client that resends at once cannot make a stream of them
                response = problem_response(refused.status, refused.detail, headers=refused.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _drain(receive, limit: int) -> None:  # noqa: ANN001
        """Read the refused request's body unparsed (up to ``limit`` bytes), so its client reads the 429 on a
        connection that stays open instead of meeting a reset while it still writes."""
        seen = 0
        while seen <= limit:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    @staticmethod
    async def _refusal(scope) -> problems.Problem | None:  # noqa: ANN001
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.startswith(SESSION_PREFIX):
            return None
        hub: Hub = scope["app"].state.hub
        principal = await hub.keys.resolve(hub.db, token)
        return bounded.refusal(principal.org_id) if principal is not None else None


class HubApp(FastAPI):
    """The hub's FastAPI app: webhook deliveries skip its middleware stack (see ``WebhookDispatch``).

    A delivery passes only the request telemetry and the body-size limit; every other request goes
    through the whole stack, including the same two.
    """

    def __init__(self, *, max_body_bytes: int, **kwargs) -> None:  # noqa: ANN003 - FastAPI's own
        super().__init__(**kwargs)
        self.max_body_bytes = max_body_bytes

    def build_middleware_stack(self) -> ASGIApp:
        deliveries = RequestTelemetry(BodySizeLimit(serve_delivery, limit=self.max_body_bytes))
        return WebhookDispatch(super().build_middleware_stack(), deliveries)


def create_app(hub: Hub | None = None) -> FastAPI:
    """Build the app around a runtime (built from settings and migrated at startup if not given)."""
    import_action_modules()  # provider actions register their params for rule validation

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = hub is None
        app.state.hub = hub or Hub.from_settings(get_settings())
        if owned:
            await app.state.hub.db.migrate()
        async with relay_running(app):
            gc.collect()
            gc.freeze()  # the app and its startup state live as long as the process: keep them out of GC passes
            yield
        if owned:
            await app.state.hub.close()

    settings = hub.settings if hub else get_settings()
    app = HubApp(
        max_body_bytes=settings.max_body_bytes,
        title="FulQrun Hub",
        version="1",
        description="Integration hub and workflow-automation engine of the FulQrun CRM.",
        lifespan=lifespan,
        docs_url=None,  # served by console.install from packaged assets, no CDN
        redoc_url=None,
        # RequestTelemetry below makes the one server span and the request metrics of each request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if hub is not None:
        app.state.hub = hub
    problems.install(app)
    app.add_middleware(IdempotencyMiddleware)  # inside the body-size limit
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(EvaluationAdmission)
    app.add_middleware(RequestTelemetry)
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(hub: HubDep) -> JSONResponse:
        """Readiness: the database and Temporal both answer (503 otherwise)."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(hub.db.ping(), timeout=3)
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            client = await hub.temporal()
            await asyncio.wait_for(client.service_client.check_health(), timeout=3)
            checks["temporal"] = "ok"
        except (TemporalUnavailable, Exception) as exc:  # noqa: BLE001
            checks["temporal"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def codec_cors(request: Request, response: Response) -> Response:
        """The Temporal UI calls /codec from the browser: answer its origin (if allowed) with CORS headers."""
        origin = request.headers.get("origin")
        if origin and origin in app.state.hub.settings.codec_origins:
            response.headers.update({
                "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": CODEC_HEADERS, "Vary": "Origin",
            })
        return response

    @app.options("/codec/{op}", include_in_schema=False)
    async def codec_preflight(request: Request) -> Response:
        """CORS preflight of the Temporal UI's codec calls."""
        return codec_cors(request, Response(status_code=204))

    @app.post("/codec/{op}", tags=["ops"], include_in_schema=False)
    async def codec(op: str, request: Request, hub: HubDep, key: AdminKey) -> Response:
        """Temporal UI codec server for an org's admin: decodes the payloads sealed for the caller's org (any
        other payload comes back as it was sent); encodes under the caller's org's data key."""
        if op not in ("encode", "decode"):
            return problem_response(404, f"unknown codec operation {op!r}")
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            return problem_response(400, f"not a Payloads JSON document: {exc}")
        if op == "decode":
            result = await EncryptionCodec(hub.vault, hub.keyring).decode_for(key.org_id, payloads.payloads)
        else:
            result = await EncryptionCodec(hub.vault, hub.keyring, org=key.org_id).encode(payloads.payloads)
        return codec_cors(request, JSONResponse(json_format.MessageToDict(Payloads(payloads=result))))

    return app


def app() -> FastAPI:
    """Factory for ``uvicorn api:app --factory``."""
    return create_app()
