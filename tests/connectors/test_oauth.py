"""Pure pieces of the connection lifecycle: refresh schedule, PKCE URL, retry delays, error mapping."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import httpx

from activities.connections import provider_failure, retry_delay
from activities.connector_types import ERR_PROVIDER, ERR_RATE_LIMITED, ERR_UNAUTHORIZED, ERR_UNAVAILABLE
from connectors.base import ProviderError
from connectors.catalogue import catalogue
from connectors.oauth import authorization_url, new_code_verifier, next_refresh_at

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_refresh_is_due_ahead_of_expiry_and_daily_where_refresh_tokens_rotate() -> None:
    slack, ms, generic = (catalogue().get(k) for k in ("slack", "microsoft", "generic_oauth2"))
    hour = NOW + timedelta(hours=1)
    assert next_refresh_at(ms, hour, NOW, has_refresh_token=False) == hour - timedelta(minutes=10)
    assert next_refresh_at(ms, NOW + timedelta(seconds=60), NOW, False) == NOW + timedelta(seconds=48)
    # the lead is a fifth of the lifetime: an 8-second token is refreshed after 6.4 s, never at once
    assert next_refresh_at(ms, NOW + timedelta(seconds=8), NOW, False) == NOW + timedelta(seconds=6.4)
    twelve = NOW + timedelta(hours=12)
    assert next_refresh_at(slack, twelve, NOW, True) == twelve - timedelta(minutes=10)
    week = NOW + timedelta(days=7)
    assert next_refresh_at(slack, week, NOW, True) == NOW + timedelta(hours=24)  # rotation: at least daily
    assert next_refresh_at(generic, None, NOW, True) == NOW + timedelta(hours=24)
    assert next_refresh_at(generic, hour, NOW, has_refresh_token=False) is None  # nothing to refresh with
    assert next_refresh_at(ms, None, NOW, False) is None


def test_authorization_url_carries_an_s256_challenge_of_the_verifier_and_the_state() -> None:
    endpoints = catalogue().get("slack").endpoints({"client_id": "cid"})
    verifier = new_code_verifier()
    url = authorization_url(endpoints, "cid", "https://hub.example/oauth/slack/callback", "st4te", verifier)
    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert url.startswith("https://slack.com/oauth/v2/authorize?")
    assert q["code_challenge"] == expected and q["code_challenge_method"] == "S256"
    assert q["state"] == "st4te" and q["client_id"] == "cid" and q["response_type"] == "code"
    assert q["scope"] == "chat:write,chat:write.public,channels:read,commands"
    assert 43 <= len(verifier) <= 128


def test_retry_delay_reads_each_providers_header_format() -> None:
    generic, docusign = catalogue().get("generic_oauth2"), catalogue().get("docusign")
    assert retry_delay(generic, {"retry-after": "2"}, NOW) == timedelta(seconds=2)
    assert retry_delay(generic, {"retry-after": "soon"}, NOW) is None
    assert retry_delay(generic, {}, NOW) is None
    epoch = str(int((NOW + timedelta(seconds=30)).timestamp()))
    assert retry_delay(docusign, {"x-ratelimit-reset": epoch}, NOW) == timedelta(seconds=30)


def test_provider_errors_map_to_retry_decisions() -> None:
    generic = catalogue().get("generic_oauth2")
    limited = provider_failure(generic, ProviderError(429, "slow down", headers={"Retry-After": "2"}))
    assert limited.type == ERR_RATE_LIMITED and not limited.non_retryable
    assert limited.next_retry_delay == timedelta(seconds=2)
    bad = provider_failure(generic, ProviderError(422, "amount must be positive", code="invalid"))
    assert bad.type == ERR_PROVIDER and bad.non_retryable and "amount must be positive" in bad.message
    down = provider_failure(generic, ProviderError(502, "bad gateway"))
    assert down.type == ERR_UNAVAILABLE and not down.non_retryable
    denied = provider_failure(generic, ProviderError(401, "invalid_token"))
    assert denied.type == ERR_UNAUTHORIZED and denied.non_retryable


def test_provider_error_takes_the_message_from_common_envelopes() -> None:
    def err(status: int, **kw) -> ProviderError:
        return ProviderError.from_response(httpx.Response(status, **kw))

    assert err(400, json={"error": {"code": "x", "message": "nested"}}).message == "nested"
    stripe_like = err(402, json={"error": {"type": "card_error", "message": "Your card was declined."}})
    assert stripe_like.code == "card_error" and stripe_like.message == "Your card was declined."
    oauth_like = err(400, json={"error": "invalid_grant", "error_description": "expired"})
    assert (oauth_like.code, oauth_like.message) == ("invalid_grant", "expired")
    docusign_like = err(400, json={"errorCode": "INVALID_EMAIL", "message": "bad email"})
    assert (docusign_like.code, docusign_like.message) == ("INVALID_EMAIL", "bad email")
    assert err(503, text="upstream down").message == "upstream down"
    assert err(429, headers={"Retry-After": "3"}).headers["retry-after"] == "3"
