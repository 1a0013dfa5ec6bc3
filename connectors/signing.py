"""Webhook signature cryptography, one pair of pure functions per provider: ``verify_*`` and ``sign_*``.

The provider modules' ``WebhookScheme``s (``connectors.events``) call these with the right headers.

Every verifier works on the raw request bytes (never on parsed JSON), compares in constant time,
accepts several secrets at once (rotation: newest first, any may match), takes the clock as an
argument (``now``, Unix seconds; the wall clock when omitted) and raises ``SignatureError`` whose
``reason`` names exactly one cause of failure (see ``REASONS``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

import jwt

STRIPE_TOLERANCE = 300
SLACK_TOLERANCE = 300
GENERIC_TOLERANCE = 300
HUBSPOT_TOLERANCE = 300

REASONS: dict[str, str] = {
    "no_secret": "no signing secret is configured for this connection",
    "missing_signature": "the request carries no signature",
    "malformed_signature": "the signature header cannot be parsed",
    "missing_timestamp": "the request carries no signature timestamp",
    "malformed_timestamp": "the signature timestamp is not an integer",
    "stale_timestamp": "the signature timestamp is older than the tolerance (replayed or delayed request)",
    "future_timestamp": "the signature timestamp is further in the future than the tolerance",
    "signature_mismatch": "no signature matches any of the connection's secrets",
    "token_mismatch": "the bearer token matches none of the connection's tokens",
    "jwt_invalid": "the JWT is malformed or not signed by the configured public key",
    "jwt_expired": "the JWT has expired",
    "body_hash_mismatch": "the JWT's body_sha256 does not match the body",
    "webhook_url_mismatch": "the JWT's webhook_url is not this endpoint",
    "client_state_mismatch": "a notification's clientState matches none of the connection's values",
}


class SignatureError(Exception):
    """A request that fails verification; ``reason`` is one key of ``REASONS``."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown signature failure reason {reason!r}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        super().__init__(f"{reason}: {self.detail}")


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _require(secrets: Sequence[str]) -> list[str]:
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError("no_secret")
    return usable


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _any_equal(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """True if some candidate equals some expected value; every pair is compared in constant time."""
    found = False
    for want in expected:
        for got in candidates:
            found |= hmac.compare_digest(want, got)
    return found


def _check_window(ts: int, now: float | None, tolerance: int) -> None:
    age = _now(now) - ts
    if age > tolerance:
        raise SignatureError("stale_timestamp", f"timestamp is {int(age)} s old (tolerance {tolerance} s)")
    if -age > tolerance:
        raise SignatureError("future_timestamp", f"timestamp is {int(-age)} s ahead (tolerance {tolerance} s)")


def _parse_timestamp(raw: str | None) -> int:
    if raw is None or not raw.strip():
        raise SignatureError("missing_timestamp")
    try:
        return int(raw.strip())
    except ValueError:
        raise SignatureError("malformed_timestamp") from None


# --- Stripe: Stripe-Signature: t=<ts>,v1=<hex hmac(secret, "<t>.<body>")>[,v1=...][,v0=...] ---------------


def sign_stripe(payload: bytes, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` header value for ``payload``."""
    mac = _hmac_sha256(secret.encode(), f"{timestamp}.".encode() + payload).hex()
    return f"t={timestamp},v1={mac}"


def verify_stripe(
    payload: bytes, header: str | None, secrets: Sequence[str], *, tolerance: int = STRIPE_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a ``Stripe-Signature`` (every v1 entry, every secret); returns its timestamp."""
    keys = _require(secrets)
    if header is None or not header.strip():
        raise SignatureError("missing_signature")
    ts: int | None = None
    sigs: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                ts = int(value)
            except ValueError:
                raise SignatureError("malformed_signature", "the t= value is not an integer") from None
        elif key == "v1" and value:
            try:
                sigs.append(bytes.fromhex(value))
            except ValueError:
                raise SignatureError("malformed_signature", "a v1 signature is not hexadecimal") from None
    if ts is None or not sigs:
        raise SignatureError("malformed_signature", "expected t=<timestamp> and at least one v1=<signature>")
    expected = [_hmac_sha256(k.encode(), f"{ts}.".encode() + payload) for k in keys]
    if not _any_equal(sigs, expected):
        raise SignatureError("signature_mismatch")
    _check_window(ts, now, tolerance)
    return ts


# --- Slack: X-Slack-Signature: v0=<hex hmac(secret, "v0:<ts>:<body>")>, X-Slack-Request-Timestamp ----------


def sign_slack(body: bytes, secret: str, timestamp: int) -> str:
    """An ``X-Slack-Signature`` value for ``body`` sent at ``timestamp``."""
    return "v0=" + _hmac_sha256(secret.encode(), f"v0:{timestamp}:".encode() + body).hex()


def verify_slack(
    body: bytes, timestamp: str | None, signature: str | None, secrets: Sequence[str], *,
    tolerance: int = SLACK_TOLERANCE, now: float | None = None,
) -> int:
    """Check Slack's v0 signature and its 5-minute replay window; returns the timestamp."""
    keys = _require(secrets)
    if signature is None or not signature.strip():
        raise SignatureError("missing_signature")
    ts = _parse_timestamp(timestamp)
    version, sep, hexsig = signature.strip().partition("=")
    if version != "v0" or not sep:
        raise SignatureError("malformed_signature", "expected v0=<hex>")
    try:
        got = bytes.fromhex(hexsig)
    except ValueError:
        raise SignatureError("malformed_signature", "the v0 signature is not hexadecimal") from None
    _check_window(ts, now, tolerance)
    expected = [_hmac_sha256(k.encode(), f"v0:{ts}:".encode() + body) for k in keys]
    if not _any_equal([got], expected):
        raise SignatureError("signature_mismatch")
    return ts


# --- DocuSign Connect: X-DocuSign-Signature-1..N = base64(hmac(key, body)) -----------------------------------


def sign_docusign(body: bytes, secret: str) -> str:
    """One ``X-DocuSign-Signature-N`` value."""
    return base64.b64encode(_hmac_sha256(secret.encode(), body)).decode()


def docusign_signatures(headers: Mapping[str, str]) -> list[str]:
    """The values of every ``X-DocuSign-Signature-<n>`` header (``headers`` keys lower-case)."""
    prefix = "x-docusign-signature-"
    return [v for k, v in headers.items() if k.startswith(prefix) and k[len(prefix):].isdigit()]


def verify_docusign(body: bytes, signatures: Sequence[str], secrets: Sequence[str]) -> None:
    """Accept the body if any ``X-DocuSign-Signature-N`` matches any HMAC key."""
    keys = _require(secrets)
    if not signatures:
        raise SignatureError("missing_signature")
    got: list[bytes] = []
    for value in signatures:
        try:
            got.append(base64.b64decode(value.strip(), validate=True))
        except ValueError:
            raise SignatureError("malformed_signature", "an X-DocuSign-Signature is not base64") from None
    if not _any_equal(got, [_hmac_sha256(k.encode(), body) for k in keys]):
        raise SignatureError("signature_mismatch")


# --- Gong: Authorization: <JWT RS256 {webhook_url, body_sha256, exp}>, or a per-connection token -----------


def _bearer(authorization: str | None) -> str | None:
    if authorization is None or not authorization.strip():
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else authorization.strip()


def sign_gong_jwt(body: bytes, private_key_pem: str, webhook_url: str, exp: int) -> str:
    """A Gong-style signed JWT (used by tests and ``webhooks send``; Gong signs with its own key)."""
    claims = {"webhook_url": webhook_url, "body_sha256": hashlib.sha256(body).hexdigest(), "exp": exp}
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


def _body_hash_matches(claim: object, body: bytes) -> bool:
    if not isinstance(claim, str):
        return False
    digest = hashlib.sha256(body).digest()
    encodings = [digest.hex().encode(), base64.b64encode(digest), base64.urlsafe_b64encode(digest).rstrip(b"=")]
    return _any_equal([claim.strip().encode()], encodings)


def _same_url(a: str, b: str) -> bool:
    return hmac.compare_digest(a.rstrip("/").encode(), b.rstrip("/").encode())


def verify_gong_jwt(
    body: bytes, authorization: str | None, public_keys: Sequence[str], webhook_url: str, *,
    now: float | None = None,
) -> dict:
    """Check Gong's signed JWT header: RS256 by a configured key, unexpired, for this URL and body."""
    keys = _require(public_keys)
    token = _bearer(authorization)
    if token is None:
        raise SignatureError("missing_signature")
    claims: dict | None = None
    for key in keys:
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_exp": False})
            break
        except jwt.InvalidTokenError:
            continue
    if claims is None:
        raise SignatureError("jwt_invalid")
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise SignatureError("jwt_invalid", "the JWT has no numeric exp claim")
    if _now(now) >= exp:
        raise SignatureError("jwt_expired")
    if not _body_hash_matches(claims.get("body_sha256"), body):
        raise SignatureError("body_hash_mismatch")
    if not isinstance(claims.get("webhook_url"), str) or not _same_url(claims["webhook_url"], webhook_url):
        raise SignatureError("webhook_url_mismatch")
    return claims


def verify_token(presented: str | None, tokens: Sequence[str]) -> None:
    """Per-connection shared token (``Authorization: Bearer <token>``), any configured token matches."""
    keys = _require(tokens)
    token = _bearer(presented)
    if token is None:
        raise SignatureError("missing_signature")
    if not _any_equal([token.encode()], [k.encode() for k in keys]):
        raise SignatureError("token_mismatch")


# --- Microsoft Graph: clientState echoed in every notification --------------------------------------------


def verify_graph_client_state(notifications: Sequence[Mapping], client_states: Sequence[str]) -> None:
    """Every notification must carry one of the subscription's ``clientState`` values."""
    keys = _require(client_states)
    if not notifications:
        raise SignatureError("missing_signature", "the notification collection is empty")
    expected = [k.encode() for k in keys]
    for note in notifications:
        state = note.get("clientState") if isinstance(note, Mapping) else None
        if not isinstance(state, str) or not state:
            raise SignatureError("missing_signature", "a notification carries no clientState")
        if not _any_equal([state.encode()], expected):
            raise SignatureError("client_state_mismatch")


# --- generic: Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature: "v1,<b64>" ...) -------


def _standard_key(secret: str) -> bytes:
    """``whsec_<base64>`` secrets are base64 keys (Standard Webhooks); any other string is used as is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign_generic(body: bytes, secret: str, msg_id: str, timestamp: int) -> str:
    """A ``webhook-signature`` value (Standard Webhooks v1)."""
    mac = _hmac_sha256(_standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac).decode()


def verify_generic(
    body: bytes, msg_id: str | None, timestamp: str | None, signature: str | None, secrets: Sequence[str], *,
    tolerance: int = GENERIC_TOLERANCE, now: float | None = None,
) -> int:
    """Standard Webhooks: HMAC-SHA256 over ``id.timestamp.body``, space-separated ``v1,<sig>`` list."""
    keys = _require(secrets)
    if signature is None or not signature.strip():
        raise SignatureError("missing_signature")
    if msg_id is None or not msg_id.strip():
        raise SignatureError("malformed_signature", "the webhook-id header is missing")
    ts = _parse_timestamp(timestamp)
    entries = [item.partition(",") for item in signature.split()]
    v1 = [b64 for version, sep, b64 in entries if sep and version == "v1"]
    if not v1:
        raise SignatureError("malformed_signature", "expected 'v1,<base64>' entries")
    got: list[bytes] = []
    for b64 in v1:
        try:
            got.append(base64.b64decode(b64, validate=True))
        except ValueError:
            continue  # one unreadable entry among several is no match, not a reason to refuse the rest
    if not got:
        raise SignatureError("malformed_signature", "no v1 signature is base64")
    _check_window(ts, now, tolerance)
    message = f"{msg_id.strip()}.{ts}.".encode() + body
    if not _any_equal(got, [_hmac_sha256(_standard_key(k), message) for k in keys]):
        raise SignatureError("signature_mismatch")
    return ts


# --- HubSpot: v1/v2 (SHA-256 of secret + ...), v3 (base64 HMAC with timestamp) -----------------------------


def hubspot_signature(
    version: str, secret: str, body: bytes, method: str = "POST", uri: str = "", timestamp: str = ""
) -> str:
    """The X-HubSpot-Signature (v1, v2) or X-HubSpot-Signature-v3 value for a request."""
    if version == "v1":
        return hashlib.sha256(secret.encode() + body).hexdigest()
    if version == "v2":
        return hashlib.sha256(secret.encode() + method.encode() + uri.encode() + body).hexdigest()
    if version == "v3":
        message = method.encode() + uri.encode() + body + timestamp.encode()
        return base64.b64encode(_hmac_sha256(secret.encode(), message)).decode()
    raise ValueError(f"unknown HubSpot signature version {version!r}")


def verify_hubspot(
    body: bytes, headers: Mapping[str, str], method: str, uri: str, secrets: Sequence[str], *,
    tolerance: int = HUBSPOT_TOLERANCE, now: float | None = None,
) -> str:
    """Check HubSpot's v3 signature (with its 5-minute window) or, if the request says so, v1/v2."""
    keys = _require(secrets)
    if headers.get("x-hubspot-signature-v3"):
        ts_raw = headers.get("x-hubspot-request-timestamp")
        ts_ms = _parse_timestamp(ts_raw)
        _check_window(ts_ms // 1000, now, tolerance)
        presented, version, ts = headers["x-hubspot-signature-v3"].strip(), "v3", (ts_raw or "").strip()
    elif headers.get("x-hubspot-signature"):
        version = (headers.get("x-hubspot-signature-version") or "v1").strip().lower()
        if version not in ("v1", "v2"):
            raise SignatureError("malformed_signature", f"unknown X-HubSpot-Signature-Version {version!r}")
        presented, ts = headers["x-hubspot-signature"].strip(), ""
    else:
        raise SignatureError("missing_signature")
    expected = [hubspot_signature(version, k, body, method, uri, ts).encode() for k in keys]
    if not _any_equal([presented.encode()], expected):
        raise SignatureError("signature_mismatch")
    return version
