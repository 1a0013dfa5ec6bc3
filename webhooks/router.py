"""``POST /webhooks/{provider}/{connection_id}``: verify, store in the inbox, acknowledge.

Order of business, each step with one job (as bolt's middleware), each provider's part done by its
``WebhookScheme`` (``connectors.events``; registered by the provider's module, found with one dict get):
1. the connection (404 if unknown or not this provider's), 2. a handshake answered before any signature
(``challenge``: Graph's ``validationToken``), 3. the signature over the raw bytes (``verify``: 401 with the
reason; nothing stored), 4. a handshake answered after it (``handshake``: Slack's ``url_verification``), 5. the
events of the delivery (``split``) committed to the inbox (group commit) — only then the acknowledgement the
provider expects (``ack_status``, ``ack_counts``). Temporal is never waited for: the relay takes it from there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.events import Delivery, EventTooLarge, MalformedEvent, MalformedRequest, Reply, for_provider
from connectors.signing import SignatureError
from hub.problems import problem_response
from hub.runtime import Hub
from hub.store.inbox import NewEvent
from webhooks import metrics
from webhooks.inbox import CredentialCache, InboxWriter

log = logging.getLogger("hub.webhooks")
router = APIRouter(tags=["webhooks"])
SENSITIVE_HEADER_PARTS = ("signature", "authorization", "cookie", "token", "secret", "api-key", "apikey")
_SENSITIVE = re.compile("|".join(map(re.escape, SENSITIVE_HEADER_PARTS)))


def safe_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers worth keeping: without signatures, tokens, cookies and other secrets."""
    return {k: v for k, v in headers.items() if not _SENSITIVE.search(k)}


class Intake:
    """Per-app webhook intake state: the credential cache, the group-commit writer, the relay's wake-up."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.credentials = CredentialCache(hub.db, hub.vault)
        self.writer = InboxWriter(hub.db)
        self.listeners: list[Callable[[], None]] = []

    def notify(self) -> None:
        """Tell in-process relays that new rows are waiting."""
        for listener in self.listeners:
            listener()


def app_intake(app: FastAPI) -> Intake:
    """The app's intake, created on first use."""
    if getattr(app.state, "webhook_intake", None) is None:
        app.state.webhook_intake = Intake(app.state.hub)
    return app.state.webhook_intake


def intake(request: Request) -> Intake:
    """The intake of the app serving ``request``."""
    return app_intake(request.app)


def _public_url(hub: Hub, request: Request) -> str:
    """This endpoint's URL as the provider knows it (``HUB_PUBLIC_URL`` + path), without the query."""
    base = hub.settings.public_url
    return f"{base.rstrip('/')}{request.url.path}" if base else str(request.url.replace(query=""))


def _reject(provider: str, status: int, reason: str, detail: str) -> Response:
    metrics.REJECTED.labels(provider, reason).inc()
    return problem_response(status, detail, reason=reason)


def _reply(reply: Reply) -> Response:
    if isinstance(reply.body, dict):
        return JSONResponse(reply.body, reply.status)
    return PlainTextResponse(reply.body, reply.status, headers={"X-Content-Type-Options": "nosniff"})


def _ack(accepted: int, duplicates: int, status: int) -> Response:
    return Response(
        b'{"accepted":%d,"duplicates":%d}' % (accepted, duplicates), status, media_type="application/json"
    )


@router.post("/webhooks/{provider}/{connection_id}", include_in_schema=True)
async def receive(provider: str, connection_id: str, request: Request) -> Response:
    """Receive one provider delivery for one connection."""
    scheme = for_provider(provider)
    if scheme is None:  # not a provider with webhooks: counted under one label, whatever the path says
        metrics.RECEIVED.labels("unknown").inc()
        return _reject("unknown", 404, "unknown_provider", f"provider {provider!r} sends no webhooks here")
    counters = metrics.for_provider(provider)
    counters.received.inc()
    box = intake(request)
    creds, _ = await box.credentials.get(connection_id)
    if creds is None or creds.provider != provider or creds.status == "disabled":
        return _reject(provider, 404, "unknown_connection", f"no {provider} connection {connection_id!r}")

    query = dict(request.query_params) if request.scope.get("query_string") else {}
    try:
        if (early := scheme.challenge(query)) is not None:
            return _reply(early)
    except MalformedRequest as exc:
        return _reject(provider, 400, "malformed_request", str(exc))

    body = await request.body()
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
    url = _public_url(box.hub, request) if scheme.needs_url else ""
    delivery = Delivery(body, headers, query, request.scope["method"], url)
    try:
        scheme.verify(delivery, creds)
    except EventTooLarge as exc:  # a scheme that reads the body to find its signature (Graph's clientState)
        return _reject(provider, 400, "malformed_event", str(exc))
    except SignatureError as first:
        fresh, reloaded = await box.credentials.get(connection_id, reload=True)
        error: SignatureError | None = first
        if reloaded and fresh is not None:
            try:
                scheme.verify(delivery, fresh)
                error = None
            except SignatureError as again:
                error = again
        if error is not None:
            log.info("webhook rejected: %s %s %s", provider, connection_id, error.reason)
            return _reject(provider, 401, error.reason, error.detail)
    counters.verified.inc()

    if (handshake := scheme.handshake(body, headers)) is not None:
        return _reply(handshake)

    try:
        parts = scheme.split(body, headers)
    except MalformedEvent as exc:
        return _reject(provider, 400, "malformed_event", str(exc))
    kept = safe_headers(headers)
    new = [
        NewEvent(
            creds.org_id, creds.connection_id, provider, p.event_id, p.type, kept, p.body, p.content_type
        )
        for p in parts
    ]
    try:
        flags = await box.writer.submit(new)
    except (SQLAlchemyError, OSError):
        log.exception("webhook inbox write failed: %s %s", provider, connection_id)
        return problem_response(
            503, "the inbox cannot be written right now; retry", headers={"Retry-After": "5"}
        )
    accepted = sum(flags)
    counters.accepted.inc(accepted)
    if accepted < len(flags):
        counters.duplicates.inc(len(flags) - accepted)
    if accepted:
        box.notify()
    if not scheme.ack_counts:
        return Response(status_code=scheme.ack_status)
    return _ack(accepted, len(flags) - accepted, scheme.ack_status)


RECEIVE_ROUTE = next(r for r in router.routes if getattr(r, "endpoint", None) is receive)


def delivery_of(scope: Scope) -> tuple[str, str] | None:
    """``(provider, connection_id)`` of an ASGI request ``POST /webhooks/{provider}/{connection_id}``, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    parts = scope["path"].removeprefix(scope.get("root_path", "")).split("/")
    ok = len(parts) == 4 and parts[1] == "webhooks" and parts[2] and parts[3]
    return (parts[2], parts[3]) if ok else None


async def serve_delivery(scope: Scope, receive_: Receive, send: Send) -> None:
    """``receive`` as a plain ASGI app, for requests ``delivery_of`` recognises."""
    provider, connection_id = delivery_of(scope)
    scope["route"] = RECEIVE_ROUTE  # the route's template labels the request's metrics
    response = await receive(provider, connection_id, Request(scope, receive_))
    await response(scope, receive_, send)


class WebhookDispatch:
    """ASGI: webhook deliveries to ``deliveries``, every other request to ``app``.

    The route above documents the endpoint and serves it in any app; the hub's app sends deliveries
    around FastAPI's middleware stack, route matching and dependency solving (which cost more
    than verifying and storing the event) to ``serve_delivery`` wrapped in the few middlewares a
    delivery needs.
    """

    def __init__(self, app: ASGIApp, deliveries: ASGIApp) -> None:
        self.app, self.deliveries = app, deliveries

    async def __call__(self, scope: Scope, receive_: Receive, send: Send) -> None:
        await (self.app if delivery_of(scope) is None else self.deliveries)(scope, receive_, send)

