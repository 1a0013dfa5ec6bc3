"""Per-scheme request verification: which headers carry what, and which credentials check them.

Pure (no I/O): the router hands over the raw request and the connection's credentials; the
actual cryptography is in ``connectors.signing``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from connectors import signing
from connectors.catalogue import catalogue
from connectors.events import EventTooLarge, MalformedEvent, graph_notifications
from connectors.signing import SignatureError

SENSITIVE_HEADER_PARTS = ("signature", "authorization", "cookie", "token", "secret", "api-key", "apikey")
_SENSITIVE = re.compile("|".join(map(re.escape, SENSITIVE_HEADER_PARTS)))
NEEDS_URL = frozenset({"hubspot", "gong"})  # schemes whose signature covers the endpoint's public URL


@dataclass(frozen=True)
class Credentials:
    """What verifies one connection's webhooks: its org, provider, config and secrets."""

    connection_id: str
    org_id: str
    provider: str
    status: str
    config: dict
    webhook_secrets: list[str] = field(default_factory=list)
    client_states: list[str] = field(default_factory=list)
    public_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """One inbound request: raw body, lower-case headers, query parameters, method and public URL.

    ``url`` is only needed (and only filled in) for the schemes in ``NEEDS_URL``.
    """

    body: bytes
    headers: dict[str, str]
    query: dict[str, str]
    method: str
    url: str


def scheme_for(provider: str) -> str | None:
    """The signing scheme of a provider: its catalogue entry's ``webhook.signing``, else its own name."""
    entry = catalogue().providers.get(provider)
    if entry is not None:
        return entry.webhook.signing if entry.webhook else None
    return provider if provider in signing.SCHEMES else None


def split_secrets(value: str | None) -> list[str]:
    """A newline-separated secret list (newest first) as a list, blank lines dropped."""
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


def safe_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers worth keeping: without signatures, tokens, cookies and other secrets."""
    return {k: v for k, v in headers.items() if not _SENSITIVE.search(k)}


def graph_validation_token(query: dict[str, str]) -> str | None:
    """The ``validationToken`` of a Graph (or lower-case SharePoint) subscription validation request."""
    for key, value in query.items():
        if key.lower() == "validationtoken":
            return value
    return None


def verify(scheme: str, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
    """Raise ``SignatureError`` unless the delivery is authentic for this connection."""
    h, body = delivery.headers, delivery.body
    if scheme == "stripe":
        signing.verify_stripe(body, h.get("stripe-signature"), creds.webhook_secrets, now=now)
    elif scheme == "slack":
        signing.verify_slack(
            body, h.get("x-slack-request-timestamp"), h.get("x-slack-signature"), creds.webhook_secrets, now=now
        )
    elif scheme == "docusign":
        signing.verify_docusign(body, signing.docusign_signatures(h), creds.webhook_secrets)
    elif scheme == "gong":
        _verify_gong(delivery, creds, now)
    elif scheme == "microsoft":
        try:
            notes = graph_notifications(body)
        except EventTooLarge:
            raise
        except MalformedEvent:
            raise SignatureError("missing_signature", "not a Graph notification collection") from None
        signing.verify_graph_client_state(notes, creds.client_states or creds.webhook_secrets)
    elif scheme == "hubspot":
        signing.verify_hubspot(body, h, delivery.method, delivery.url, creds.webhook_secrets, now=now)
    elif scheme == "generic":
        signing.verify_generic(
            body, h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature"),
            creds.webhook_secrets, now=now,
        )  # fmt: skip
    else:
        raise ValueError(f"no verifier for scheme {scheme!r}")


def _verify_gong(delivery: Delivery, creds: Credentials, now: float | None) -> None:
    """Signed-JWT mode when a public key is configured, else the per-connection token mode."""
    auth = delivery.headers.get("authorization")
    if creds.public_keys:
        url = str(creds.config.get("webhook_url") or delivery.url)
        signing.verify_gong_jwt(delivery.body, auth, creds.public_keys, url, now=now)
    else:
        signing.verify_token(auth, creds.webhook_secrets)
