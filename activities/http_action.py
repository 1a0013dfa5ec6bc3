"""The ``http.post`` rule action: POST JSON to an outside URL, guarded against SSRF.

The host is resolved first and every address checked (``rules.netguard``); the request then goes
to the checked address itself (Host header and TLS SNI keep the name, so certificates are still
verified against it), so a second DNS answer cannot rebind it. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from hub.runtime import Hub
from rules.actions import HttpPost
from rules.netguard import DestinationRefused, check_addresses, parse_url

HTTP_POST = "http.post"
MAX_RESPONSE_CHARS = 65_536
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


class HttpPostCall(BaseModel):
    """One http.post action of a fired rule."""

    org_id: str
    params: dict
    idempotency_key: str


async def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class HttpActions:
    """The http.post activity; the allow-list, resolver and transport are injected."""

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        resolver: Resolver = resolve,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allowlist = list(allowlist)
        self.resolver = resolver
        self.transport = transport

    @classmethod
    def from_hub(cls, hub: Hub) -> HttpActions:
        """Built from the runtime's settings (``HUB_HTTP_ALLOWLIST``)."""
        return cls(hub.settings.http_allowlist)

    @activity.defn(name=HTTP_POST)
    async def post(self, call: HttpPostCall) -> dict:
        """POST the params' JSON body; returns ``{status, body}``. Refusals and 4xx are not retried."""
        try:
            params = HttpPost.model_validate(call.params)
            scheme, host, port = parse_url(params.url)
            addresses = check_addresses(host, await self._resolve(host, port), self.allowlist)
        except (ValidationError, DestinationRefused) as exc:
            raise ApplicationError(str(exc), type="DestinationRefused", non_retryable=True) from None
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        default_port = 443 if scheme == "https" else 80
        url = httpx.URL(params.url).copy_with(host=literal.strip("[]"), port=port)
        headers = {
            **params.headers,
            "Host": host if port == default_port else f"{host}:{port}",
            "Idempotency-Key": call.idempotency_key,
        }
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        async with httpx.AsyncClient(
            transport=self.transport, follow_redirects=False, timeout=params.timeout_seconds
        ) as client:
            try:
                response = await client.post(
                    url, json=params.json_body, headers=headers, extensions=extensions
                )
            except httpx.HTTPError as exc:
                raise ApplicationError(
                    f"POST {params.url} failed: {type(exc).__name__}: {exc}", type="HttpError"
                ) from None
        body = response.text[:MAX_RESPONSE_CHARS]
        if response.is_redirect:
            raise ApplicationError(
                f"POST {params.url} answered {response.status_code}; redirects are not followed",
                type="HttpRedirect",
                non_retryable=True,
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise ApplicationError(f"POST {params.url} answered {response.status_code}", type="HttpError")
        if response.status_code >= 400:
            raise ApplicationError(
                f"POST {params.url} answered {response.status_code}: {body[:500]}",
                type="HttpClientError",
                non_retryable=True,
            )
        return {"status": response.status_code, "body": body}

    async def _resolve(self, host: str, port: int) -> Sequence[str]:
        try:
            return await self.resolver(host, port)
        except OSError as exc:
            raise DestinationRefused(f"{host} does not resolve: {exc}") from None
