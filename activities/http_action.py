"""The ``http.post`` rule action: POST JSON to an outside URL, through the egress policy.

``hub.egress``: the host is resolved first and every address checked; the request then goes
to the checked address itself (Host header and TLS SNI keep the name, so certificates are still
verified against it), so a second DNS answer cannot rebind it. Redirects are never followed.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from hub.egress import DestinationRefused, EgressPolicy, Resolver, resolve
from hub.runtime import Hub
from rules.actions import HttpPost

HTTP_POST = "http.post"
MAX_RESPONSE_CHARS = 65_536


class HttpPostCall(BaseModel):
    """One http.post action of a fired rule."""

    org_id: str
    params: dict
    idempotency_key: str


class HttpActions:
    """The http.post activity; the egress policy (or its allow-list and resolver) and transport are injected."""

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        resolver: Resolver = resolve,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: EgressPolicy | None = None,
    ) -> None:
        self.policy = policy or EgressPolicy(allowlist, resolver)
        self.transport = transport

    @classmethod
    def from_hub(cls, hub: Hub) -> HttpActions:
        """On the runtime's egress policy (``HUB_HTTP_ALLOWLIST``)."""
        return cls(policy=hub.egress)

    @activity.defn(name=HTTP_POST)
    async def post(self, call: HttpPostCall) -> dict:
        """POST the params' JSON body; returns ``{status, body}``. Refusals and 4xx are not retried."""
        try:
            params = HttpPost.model_validate(call.params)
            await self.policy.admit(params.url)  # refused before any connection (a clear, final failure)
        except (ValidationError, DestinationRefused) as exc:
            raise ApplicationError(str(exc), type="DestinationRefused", non_retryable=True) from None
        headers = {**params.headers, "Idempotency-Key": call.idempotency_key}
        async with httpx.AsyncClient(
            transport=self.policy.httpx_transport(inner=self.transport), follow_redirects=False,
            timeout=params.timeout_seconds,
        ) as client:
            try:
                response = await client.post(params.url, json=params.json_body, headers=headers)
            except DestinationRefused as exc:  # the name now resolves elsewhere
                raise ApplicationError(str(exc), type="DestinationRefused", non_retryable=True) from None
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
