"""The connector interface: actions registered by name, the context they run in, provider errors.

A provider module registers its actions with the decorator::

    class PostMessage(BaseModel):
        channel: str
        text: str

    @action("slack.post_message", PostMessage)
    async def post_message(ctx: ActionContext, params: PostMessage) -> dict:
        client = AsyncWebClient(token=await ctx.access_token(), base_url=ctx.base_url + "/")
        ...

Every request a provider sees draws from its connection's budget before it leaves: ``ctx.http`` does this
itself; an action using an SDK with its own HTTP stack awaits ``ctx.before_request()`` before each SDK call.

The activity ``connector.run_action`` (activities/connections.py) finds the action, validates the
params, builds the ``ActionContext`` and maps failures: an action raises ``ProviderError`` (or lets an
``httpx.HTTPStatusError`` escape) and the activity turns 429 into a retry after the provider's
retry header, other 4xx into a non-retryable failure carrying the provider's message, 5xx and
network errors into retries with backoff, and a 401 into one ``fresh_token()`` and one re-run.
Connectors never refresh tokens themselves and know nothing of workflows or HTTP routes.
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel

from hub.egress import EgressPolicy
from rules.actions import Output, register_action

P = TypeVar("P", bound=BaseModel)
ActionFn = Callable[["ActionContext", Any], Awaitable[dict]]


class TokenSource(Protocol):
    """Where an action's credentials come from (implemented by the activity, backed by the store)."""

    async def access_token(self) -> str:
        """A currently valid access token (or API key)."""

    async def fresh_token(self) -> str:
        """A token newer than the one last handed out (asks the ConnectionWorkflow)."""

    def secret(self, name: str) -> str | None:
        """One of the connection's stored secrets, by name."""


@dataclass(frozen=True)
class ActionSpec:
    """A registered action: its name, its params model and the coroutine function."""

    name: str
    params: type[BaseModel]
    fn: ActionFn

    @property
    def provider(self) -> str:
        """The provider the action belongs to: the part of the name before the first dot."""
        return self.name.split(".", 1)[0]


ACTIONS: dict[str, ActionSpec] = {}

#: What every request a provider sees awaits before it leaves: its draw from the connection's request budget.
#: Set by the activity for the provider call it runs (activities/connections.py); None outside one.
#: Given the request when it is a plain ``httpx`` one (the gate may bring its bearer token up to date).
REQUEST_GATE: ContextVar[Callable[[httpx.Request | None], Awaitable[object]] | None] = ContextVar(
    "request_gate", default=None)


async def before_request(request: httpx.Request | None = None) -> None:
    """Pass the current provider call's request gate: once before each request. ``ctx.http`` does it for every
    request it sends (in its transport, right after the destination check); an SDK client with its own
    transport calls ``ctx.before_request()`` before each SDK call (each makes one request: the SDKs' own
    retries are off)."""
    gate = REQUEST_GATE.get()
    if gate is not None:
        await gate(request)


def action(
    name: str, params: type[P], output: Output | None = None
) -> Callable[[Callable[[ActionContext, P], Awaitable[dict]]], Any]:
    """Register ``async def f(ctx: ActionContext, params: ParamsModel) -> dict`` as action ``name``; ``output``
    declares the fields of the dict it returns (``rules.actions.Output``), which later rule steps may use."""
    if "." not in name:
        raise ValueError(f"action name {name!r} must be '<provider>.<action>'")

    def register(fn: Callable[[ActionContext, P], Awaitable[dict]]) -> Callable[[ActionContext, P], Awaitable[dict]]:
        existing = ACTIONS.get(name)
        if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"action {name!r} is registered twice ({existing.fn.__module__}, {fn.__module__})")
        ACTIONS[name] = ActionSpec(name, params, fn)
        register_action(name, params, output=output)
        return fn

    return register


class GatedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that passes ``before_request`` just before it sends: under the egress policy's
    transport, after the destination's addresses are resolved and checked, so a request leaves as close to its
    drawn slot as this process can make it (a resolution between slot and socket would make it late)."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await before_request(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def provider_http_client(egress: EgressPolicy | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """The HTTP client handed to actions as ``ctx.http``: every request it sends (through ``egress`` when given)
    passes ``before_request`` (``GatedTransport``)."""
    gated = GatedTransport()
    return httpx.AsyncClient(transport=egress.httpx_transport(inner=gated) if egress else gated, **kwargs)


@dataclass
class ActionContext:
    """What an action may use: its connection's identity, config, base URL, credentials and HTTP clients
    (``http``, or the egress policy's clients for SDKs that bring their own stack)."""

    connection_id: str
    org_id: str
    provider: str
    config: dict
    base_url: str
    idempotency_key: str
    http: httpx.AsyncClient
    tokens: TokenSource = field(repr=False)
    #: the egress policy: SDKs not on ``http`` take their clients from it (``hub.egress``)
    egress: EgressPolicy = field(default_factory=EgressPolicy, repr=False)

    async def access_token(self) -> str:
        """A valid access token (OAuth2 modes) or the API key (api_key mode)."""
        return await self.tokens.access_token()

    async def fresh_token(self) -> str:
        """After a 401: a newer token, from the ConnectionWorkflow's single refresh (never refresh yourself)."""
        return await self.tokens.fresh_token()

    def secret(self, name: str) -> str | None:
        """A stored secret of the connection (``api_key``, ``username``, ``password``, ``private_key``...)."""
        return self.tokens.secret(name)

    async def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for plain HTTP calls: Basic for basic-auth connections, Bearer otherwise."""
        username, password = self.secret("username"), self.secret("password")
        if username is not None and password is not None:
            return {"Authorization": "Basic " + b64encode(f"{username}:{password}".encode()).decode()}
        return {"Authorization": f"Bearer {await self.access_token()}"}

    async def before_request(self) -> None:
        """Draw one request from the connection's budget (see ``before_request``); SDK clients call it per call."""
        await before_request()

    def url(self, path: str) -> str:
        """``base_url`` joined with a path."""
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"


class ProviderError(Exception):
    """A provider refused a call. ``status`` is the HTTP status; ``headers`` carry Retry-After & co."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProviderError:
        """Build from an error response, taking the provider's own message from its JSON envelope."""
        code, message = _error_fields(response)
        return cls(response.status_code, message, code=code, headers=dict(response.headers))


def raise_for_status(response: httpx.Response) -> httpx.Response:
    """Return the response if it is 2xx/3xx, else raise ``ProviderError`` with the provider's message."""
    if response.status_code >= 400:
        raise ProviderError.from_response(response)
    return response


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) from the common error envelopes; the start of the body otherwise."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
            return (str(code) if code else None), str(err.get("message") or err.get("description") or code or err)
        if isinstance(err, str):
            return err, str(body.get("error_description") or body.get("message") or err)
        for key in ("message", "errorMessage", "detail", "title"):
            if body.get(key):
                return body.get("errorCode") or body.get("code"), str(body[key])
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return None, "; ".join(str(e) for e in errors[:5])
    text = response.text.strip()[:500]
    return None, text or response.reason_phrase or f"HTTP {response.status_code}"
