"""``generic_oauth2``: an authenticated JSON request to any standards-compliant provider's API, and webhooks.

Webhooks (``StandardWebhooks``, scheme ``generic``): Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``, 300 s tolerance; ``whsec_<base64>``
secrets are base64 keys). One event per delivery, its id the ``webhook-id`` (else the body's ``id``); an event
with a ``type`` becomes a domain event of that type, verbatim, its opportunity ``data.opportunity_id``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from secrets import token_hex
from typing import Any, Literal

from pydantic import BaseModel, Field

from connectors import signing
from connectors.base import ActionContext, action, raise_for_status
from connectors.events import (
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    WebhookScheme,
    parse_json,
    webhook_scheme,
)


class RequestParams(BaseModel):
    """One HTTP request relative to the connection's base URL."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = Field(description="path under the connection's base_url, e.g. /v1/things")
    query: dict[str, str] = Field(default_factory=dict)
    json_body: dict[str, Any] | list[Any] | None = Field(default=None, alias="json")
    idempotent: bool = Field(default=False, description="send the hub's Idempotency-Key header")


@action("generic_oauth2.request", RequestParams, output={"status": int, "body": object})
async def request(ctx: ActionContext, params: RequestParams) -> dict:
    """Call the provider's API with the connection's bearer token; returns ``{"status", "body"}``."""
    headers = {"Authorization": f"Bearer {await ctx.access_token()}", "Accept": "application/json"}
    if params.idempotent:
        headers["Idempotency-Key"] = ctx.idempotency_key
    response = raise_for_status(await ctx.http.request(
        params.method, ctx.url(params.path), params=params.query or None, json=params.json_body, headers=headers,
    ))
    body: Any = response.json() if response.content else None
    return {"status": response.status_code, "body": body}


# --- webhooks (Standard Webhooks) ---------------------------------------------------------------------------


def _map_generic(doc: object) -> Mapped:
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not doc["type"]:
        return Mapped(ignored="generic event without a 'type'")
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    opp = data.get("opportunity_id")
    return Mapped(events=[DomainEvent(type=doc["type"], opportunity_id=str(opp) if opp else None, data=data)])


@webhook_scheme
class StandardWebhooks(WebhookScheme):
    """Standard Webhooks (see the module docstring)."""

    name = "generic"
    description = "Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature v1 HMAC-SHA256"

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Check ``webhook-signature`` over ``webhook-id.webhook-timestamp.body``."""
        h = delivery.headers
        signing.verify_generic(delivery.body, h.get("webhook-id"), h.get("webhook-timestamp"),
                               h.get("webhook-signature"), creds.webhook_secrets, now=now)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event: the ``webhook-id`` header (else the body's ``id``) and the body's ``type``."""
        doc = parse_json(body)
        event_id = headers.get("webhook-id") or (doc.get("id") if isinstance(doc, dict) else None)
        if not event_id:
            raise MalformedEvent("a generic event needs a webhook-id header or an 'id' field")
        event_type = doc.get("type") if isinstance(doc, dict) else None
        return [InboxEvent(str(event_id), str(event_type or "event"), body, headers.get("content-type", ""))]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """The event's ``type``, verbatim."""
        return _map_generic(parse_json(body))

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """``webhook-id`` (the body's ``id``, else a fresh one), ``webhook-timestamp``, ``webhook-signature``."""
        secret = creds.first_secret()
        doc = json.loads(body)
        msg_id = str(doc.get("id") or f"msg_{token_hex(12)}")
        return body, {"content-type": content_type, "webhook-id": msg_id, "webhook-timestamp": str(now),
                      "webhook-signature": signing.sign_generic(body, secret, msg_id, now)}

    def new_id(self, doc: dict, fresh: str) -> None:
        """``msg_<fresh>``."""
        doc["id"] = f"msg_{fresh}"

    def secret_errors(self, secrets: list[str]) -> list[str]:
        """``whsec_`` secrets must be base64 after the prefix (one that does not decode fails every delivery)."""
        errors = []
        for line in secrets:
            if line.startswith("whsec_"):
                try:
                    base64.b64decode(line.removeprefix("whsec_"), validate=True)
                except (binascii.Error, ValueError):
                    errors.append("credentials.webhook_secrets: a whsec_ secret must be base64 after 'whsec_'")
        return errors
