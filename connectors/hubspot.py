"""HubSpot webhooks (``HubSpotWebhooks``): the app's webhook subscriptions (``contact.creation`` and the like).

HubSpot signs with the app's client secret (stored as the connection's ``webhook_secrets``): version 3
(``X-HubSpot-Signature-v3``: base64 HMAC-SHA256 of method + URI + body + ``X-HubSpot-Request-Timestamp``, the
timestamp in milliseconds and at most 5 minutes old), or, when a request says so, v1 (hex SHA-256 of secret +
body) and v2 (hex SHA-256 of secret + method + URI + body). The URI is this endpoint's public URL, so
``HUB_PUBLIC_URL`` must be the address HubSpot posts to (documented at developers.hubspot.com, "Validating
requests"; the vectors in ``../shared/data/signing_vectors/hubspot_signature_vectors.json``).

A delivery is a JSON array of up to 100 events; each is stored on its own under its ``eventId`` with its
``subscriptionType`` as the event type. HubSpot events are recorded (rules can match ``hubspot.<type>``
through the inbox) but map to no domain event: no HubSpot object is an opportunity of the hub's.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors import signing
from connectors.events import (
    Credentials,
    Delivery,
    InboxEvent,
    MalformedEvent,
    WebhookScheme,
    dump,
    parse_json,
    webhook_scheme,
)


@webhook_scheme
class HubSpotWebhooks(WebhookScheme):
    """HubSpot's webhook scheme (see the module docstring)."""

    name = "hubspot"
    description = "X-HubSpot-Signature v1/v2, X-HubSpot-Signature-v3 with timestamp"
    needs_url = True

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """v3 with its 5-minute window, or v1/v2 when the request names that version."""
        signing.verify_hubspot(delivery.body, delivery.headers, delivery.method, delivery.url,
                               creds.webhook_secrets, now=now)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event per array item, by ``eventId``."""
        doc = parse_json(body)
        out = []
        for item in doc if isinstance(doc, list) else [doc]:
            if not isinstance(item, dict) or "eventId" not in item:
                raise MalformedEvent("a HubSpot event needs 'eventId'")
            out.append(InboxEvent(str(item["eventId"]), str(item.get("subscriptionType", "event")), dump(item),
                                  headers.get("content-type", "")))
        return out

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """A v3 signature for a POST to ``url``."""
        ts = str(now * 1000)
        signature = signing.hubspot_signature("v3", creds.first_secret(), body, "POST", url, ts)
        return body, {"content-type": content_type, "x-hubspot-request-timestamp": ts,
                      "x-hubspot-signature-v3": signature}
