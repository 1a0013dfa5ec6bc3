"""Signing of the events the hub sends to an org's CRM callback URL.

Each POST carries ``FulQrun-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``
(several ``v1=`` entries may appear while the secret rotates), ``FulQrun-Event-Id`` (stable across
retries: deliveries are at-least-once, so the CRM deduplicates on it) and ``FulQrun-Event-Type``.
A receiver checks the signature over the raw bytes with a constant-time compare and rejects
timestamps outside its tolerance (default 5 minutes).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "FulQrun-Signature"
EVENT_ID_HEADER = "FulQrun-Event-Id"
EVENT_TYPE_HEADER = "FulQrun-Event-Type"
SECRET_NAME = "crm_signing_secret"
DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """A callback whose signature header is missing, malformed, stale or wrong."""


def secret_owner(org_id: str) -> str:
    """The ``secrets.owner`` of an org's CRM signing secret."""
    return f"org:{org_id}"


def new_secret() -> str:
    """A fresh signing secret (``whsec_`` + 32 random bytes, URL-safe)."""
    return "whsec_" + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``FulQrun-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secrets_: list[str], body: bytes, header: str | None, now: int, tolerance: int = DEFAULT_TOLERANCE) -> None:
    """Raise SignatureError unless ``header`` signs ``body`` with one of ``secrets_`` within ``tolerance``."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    macs = [v.strip() for k, _, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not macs:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance window")
    expected = [_mac(s, timestamp, body) for s in secrets_]
    if not any(hmac.compare_digest(e, m) for e in expected for m in macs):
        raise SignatureError("no signature matches")
