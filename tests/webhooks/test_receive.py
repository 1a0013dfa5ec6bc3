"""POST /webhooks/{provider}/{connection}: verification, handshakes, rejections, the inbox row."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from app.webhooks_cli import signed_request
from connectors import signing
from hub.runtime import Hub
from hub.store.connections import secret_owner
from hub.store.inbox import WebhookEvent
from hub.store.secrets import put_secret
from tests.conftest import bearer, shared_data
from tests.webhooks.conftest import (
    ORG,
    SECRET,
    inbox_count,
    inbox_rows,
    make_connection,
    post_signed,
)
from tests.webhooks.fixtures import validation_transcripts
from tests.webhooks.test_signing import PRIVATE, PUBLIC
from webhooks.inbox import CredentialCache


def _invoice() -> bytes:
    return shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes()


def _rejected(provider: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value("hub_webhooks_rejected_total", {"provider": provider, "reason": reason})
        or 0.0
    )


async def _reject(api: httpx.AsyncClient, path: str, body: bytes, headers: dict, reason: str) -> None:
    provider = path.split("/")[2]
    before = _rejected(provider, reason)
    r = await api.post(path, content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == reason, r.json()
    assert _rejected(provider, reason) == before + 1


async def test_signed_stripe_event_is_stored_before_the_2xx(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    r = await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}
    [row] = await inbox_rows(hub)
    assert (row.org_id, row.connection_id, row.provider) == (ORG, con, "stripe")
    assert (row.event_id, row.event_type, row.status) == (
        "evt_000000000000000000000000",
        "invoice.paid",
        "pending",
    )
    assert row.body == _invoice()
    assert "stripe-signature" not in row.headers and row.headers["content-type"] == "application/json"


async def test_duplicate_delivery_is_acknowledged_and_not_stored_twice(
    api: httpx.AsyncClient, hub: Hub
) -> None:
    con = await make_connection(hub, "stripe")
    first = await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    again = await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    assert first.json()["accepted"] == 1
    assert again.status_code == 200 and again.json() == {"accepted": 0, "duplicates": 1}
    assert await inbox_count(hub) == 1


async def test_same_event_id_on_two_connections_is_two_events(api: httpx.AsyncClient, hub: Hub) -> None:
    a, b = await make_connection(hub, "stripe"), await make_connection(hub, "stripe", org="globex")
    for con in (a, b):
        assert (await post_signed(api, hub, "stripe", con, _invoice(), "application/json")).json()[
            "accepted"
        ] == 1
    assert {r.org_id for r in await inbox_rows(hub)} == {"acme", "globex"}


async def test_slack_retries_are_acknowledged_without_a_second_event(
    api: httpx.AsyncClient, hub: Hub
) -> None:
    con = await make_connection(hub, "slack")
    body = shared_data("webhooks", "slack", "event_callback.app_mention.json").read_bytes()
    first = await post_signed(api, hub, "slack", con, body, "application/json")
    retry = await post_signed(
        api,
        hub,
        "slack",
        con,
        body,
        "application/json",
        extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
    )
    assert first.status_code == retry.status_code == 200 and retry.content == b""
    [row] = await inbox_rows(hub)
    assert row.event_id == "Ev111" and b"verification_token" not in row.body


async def test_slack_url_verification_is_answered_after_verification_and_not_stored(
    api: httpx.AsyncClient, hub: Hub
) -> None:
    con = await make_connection(hub, "slack")
    body = shared_data("webhooks", "slack", "url_verification.json").read_bytes()
    challenge = json.loads(body)["challenge"]
    r = await post_signed(api, hub, "slack", con, body, "application/json")
    assert r.status_code == 200 and r.json() == {"challenge": challenge}
    unsigned = await api.post(
        f"/webhooks/slack/{con}", content=body, headers={"content-type": "application/json"}
    )
    assert unsigned.status_code == 401 and challenge not in unsigned.text
    assert await inbox_count(hub) == 0


async def test_slack_interactivity_form_payload(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "slack")
    body = shared_data("webhooks", "slack", "block_actions.json").read_bytes()
    r = await post_signed(api, hub, "slack", con, body, "application/json")  # the CLI signer form-encodes it
    assert r.status_code == 200
    [row] = await inbox_rows(hub)
    assert row.event_type == "block_actions" and row.content_type == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("transcript", ["graph", "sharepoint"])
async def test_graph_validation_token_is_echoed_as_text(
    api: httpx.AsyncClient, hub: Hub, transcript: str
) -> None:
    con = await make_connection(hub, "microsoft", client_state="state-1")
    [path] = [p for p in validation_transcripts() if f".{transcript}." in p.name]
    query = re.search(r"\?(validation[tT]oken)=(\S+)", path.read_text())
    token = "Validation: Testing client application reachability for subscription Request-Id: 3b3f9821"
    r = await api.post(
        f"/webhooks/microsoft/{con}",
        params={query.group(1): token},
        content=b"",
        headers={"content-type": "text/plain; charset=utf-8"},
    )
    assert r.status_code == 200 and r.text == token
    assert r.headers["content-type"].startswith("text/plain")
    assert await inbox_count(hub) == 0


async def test_graph_notifications_checked_against_client_state(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "microsoft", secrets=None, client_state="state-new\nstate-old")
    doc = json.loads(
        shared_data("webhooks", "msgraph", "change_notification.driveItem.onedrive.json").read_bytes()
    )
    doc["value"][0]["clientState"] = "state-old"
    r = await api.post(f"/webhooks/microsoft/{con}", json=doc)
    assert r.status_code == 202
    [row] = await inbox_rows(hub)
    assert b"state-old" not in row.body and row.event_type == "change.updated"
    doc["value"][0]["clientState"] = "forged"
    await _reject(
        api,
        f"/webhooks/microsoft/{con}",
        json.dumps(doc).encode(),
        {"content-type": "application/json"},
        "client_state_mismatch",
    )
    assert await inbox_count(hub) == 1


async def test_gong_signed_jwt_mode(api: httpx.AsyncClient, hub: Hub) -> None:
    hub.settings.public_url = "https://hub.example.com"
    con = await make_connection(hub, "gong", secrets=None, config={"gong_public_key": PUBLIC})
    body = shared_data("webhooks", "gong", "call_matched_rule.json").read_bytes()
    url = f"https://hub.example.com/webhooks/gong/{con}"
    token = signing.sign_gong_jwt(body, PRIVATE, url, int(time.time()) + 60)
    r = await api.post(f"/webhooks/gong/{con}", content=body, headers={"authorization": token})
    assert r.status_code == 200, r.text
    [row] = await inbox_rows(hub)
    assert row.event_id == "call:5599332235511222779" and "authorization" not in row.headers
    other = signing.sign_gong_jwt(
        body, PRIVATE, "https://hub.example.com/webhooks/gong/con_other", int(time.time()) + 60
    )
    await _reject(api, f"/webhooks/gong/{con}", body, {"authorization": other}, "webhook_url_mismatch")


async def test_gong_token_mode(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "gong", secrets="gong-token-1")
    body = shared_data("webhooks", "gong", "call_matched_rule.is_test.json").read_bytes()
    r = await api.post(
        f"/webhooks/gong/{con}", content=body, headers={"authorization": "Bearer gong-token-1"}
    )
    assert r.status_code == 200
    await _reject(api, f"/webhooks/gong/{con}", body, {"authorization": "Bearer guess"}, "token_mismatch")


async def test_docusign_legacy_xml_with_any_of_several_signatures(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "docusign", secrets="key-new\nkey-old")
    body = shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml").read_bytes()
    headers = {
        "content-type": "text/xml",
        "x-docusign-signature-1": signing.sign_docusign(body, "unknown"),
        "x-docusign-signature-2": signing.sign_docusign(body, "key-old"),
    }
    r = await api.post(f"/webhooks/docusign/{con}", content=body, headers=headers)
    assert r.status_code == 200
    [row] = await inbox_rows(hub)
    assert row.event_type == "envelope-completed" and not any("signature" in h for h in row.headers)


async def test_rotated_secret_is_honoured_at_once_despite_the_cache(
    api: httpx.AsyncClient, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webhooks.inbox.RELOAD_AFTER", 0.0)
    con = await make_connection(hub, "stripe", secrets="whsec_old")
    assert (await post_signed(api, hub, "stripe", con, _invoice(), "application/json")).status_code == 200
    async with hub.db.session() as session:
        await put_secret(
            session, hub.vault, ORG, secret_owner(con), "webhook_secrets", "whsec_new\nwhsec_old"
        )
    body = _invoice().replace(b"evt_000000000000000000000000", b"evt_rotated")
    header = signing.sign_stripe(body, "whsec_new", int(time.time()))
    r = await api.post(f"/webhooks/stripe/{con}", content=body, headers={"stripe-signature": header})
    assert r.status_code == 200, r.text


# --- one HTTP rejection per cause; nothing is stored ---------------------------------------------------------


async def test_missing_and_wrong_signatures_are_401_with_their_reason(
    api: httpx.AsyncClient, hub: Hub
) -> None:
    con = await make_connection(hub, "stripe")
    path, body = f"/webhooks/stripe/{con}", _invoice()
    await _reject(api, path, body, {}, "missing_signature")
    await _reject(api, path, body, {"stripe-signature": "garbage"}, "malformed_signature")
    now = int(time.time())
    await _reject(
        api,
        path,
        body,
        {"stripe-signature": signing.sign_stripe(body, "whsec_wrong", now)},
        "signature_mismatch",
    )
    tampered = body.replace(b"2000", b"9999")
    await _reject(
        api,
        path,
        tampered,
        {"stripe-signature": signing.sign_stripe(body, SECRET, now)},
        "signature_mismatch",
    )
    assert await inbox_count(hub) == 0


async def test_stale_and_future_timestamps_have_their_own_reasons(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    path, body, now = f"/webhooks/stripe/{con}", _invoice(), int(time.time())
    await _reject(
        api, path, body, {"stripe-signature": signing.sign_stripe(body, SECRET, now - 400)}, "stale_timestamp"
    )
    await _reject(
        api,
        path,
        body,
        {"stripe-signature": signing.sign_stripe(body, SECRET, now + 400)},
        "future_timestamp",
    )
    slack = await make_connection(hub, "slack")
    sbody = b'{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}'
    await _reject(
        api,
        f"/webhooks/slack/{slack}",
        sbody,
        {
            "x-slack-request-timestamp": str(now - 600),
            "x-slack-signature": signing.sign_slack(sbody, SECRET, now - 600),
        },
        "stale_timestamp",
    )
    await _reject(api, f"/webhooks/slack/{slack}", sbody, {"x-slack-signature": "v0=00"}, "missing_timestamp")
    await _reject(
        api,
        f"/webhooks/slack/{slack}",
        sbody,
        {"x-slack-signature": "v0=00", "x-slack-request-timestamp": "soon"},
        "malformed_timestamp",
    )
    assert await inbox_count(hub) == 0


async def test_connection_without_secret_rejects_everything(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe", secrets=None)
    header = signing.sign_stripe(_invoice(), "anything", int(time.time()))
    await _reject(api, f"/webhooks/stripe/{con}", _invoice(), {"stripe-signature": header}, "no_secret")
    assert await inbox_count(hub) == 0


async def test_unknown_connection_or_wrong_provider_is_404(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    assert (await api.post("/webhooks/stripe/con_doesnotexist", content=b"{}")).status_code == 404
    r = await api.post(f"/webhooks/made-up/{con}", content=b"{}")
    assert r.status_code == 404 and r.json()["reason"] == "unknown_provider"
    r = await api.post(f"/webhooks/slack/{con}", content=b"{}")
    assert r.status_code == 404 and r.json()["reason"] == "unknown_connection"
    disabled = await make_connection(hub, "stripe", status="disabled")
    assert (
        await post_signed(api, hub, "stripe", disabled, _invoice(), "application/json")
    ).status_code == 404
    assert await inbox_count(hub) == 0


async def test_body_over_the_limit_is_413(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    big = b'{"id":"evt_big","type":"x","pad":"' + b"x" * hub.settings.max_body_bytes + b'"}'
    r = await post_signed(api, hub, "stripe", con, big, "application/json")
    assert r.status_code == 413
    assert await inbox_count(hub) == 0


async def test_verified_but_unreadable_body_is_400_and_not_stored(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    r = await post_signed(api, hub, "stripe", con, b'{"no": "id"}', "application/json")
    assert r.status_code == 400 and r.json()["reason"] == "malformed_event"
    assert await inbox_count(hub) == 0


async def test_metrics_count_received_verified_accepted_duplicates(api: httpx.AsyncClient, hub: Hub) -> None:
    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"provider": "stripe"}) or 0.0

    names = (
        "hub_webhooks_received_total",
        "hub_webhooks_verified_total",
        "hub_webhooks_accepted_total",
        "hub_webhooks_duplicates_total",
    )
    before = {n: value(n) for n in names}
    con = await make_connection(hub, "stripe")
    for _ in range(2):
        await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    await api.post(f"/webhooks/stripe/{con}", content=_invoice())
    after = {n: value(n) - before[n] for n in names}
    assert after == {
        "hub_webhooks_received_total": 3,
        "hub_webhooks_verified_total": 2,
        "hub_webhooks_accepted_total": 1,
        "hub_webhooks_duplicates_total": 1,
    }
    text = (await api.get("/metrics")).text
    assert "hub_webhooks_rejected_total" in text and "hub_webhooks_relay_lag_seconds" in text


async def test_stored_row_is_unique_even_if_the_first_commit_raced(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    async with hub.db.session() as session:  # the row moved on: a re-delivery is still a duplicate
        await session.execute(update(WebhookEvent).values(status="done"))
    r = await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    assert r.json() == {"accepted": 0, "duplicates": 1}


async def test_inbox_write_failure_is_503_so_the_provider_retries(
    api: httpx.AsyncClient, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def broken(*_: object) -> set:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    con = await make_connection(hub, "stripe")
    monkeypatch.setattr("webhooks.inbox.insert_rows", broken)  # PostgreSQL's path
    monkeypatch.setattr("webhooks.inbox.SqliteWriter._insert_rows", broken)  # SQLite's
    r = await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    monkeypatch.undo()
    assert (await post_signed(api, hub, "stripe", con, _invoice(), "application/json")).json()[
        "accepted"
    ] == 1


async def test_webhook_requests_are_counted_under_the_route_template(
    api: httpx.AsyncClient, hub: Hub
) -> None:
    labels = {"method": "POST", "route": "/webhooks/{provider}/{connection_id}", "status": "200"}
    before = REGISTRY.get_sample_value("hub_http_requests_total", labels) or 0.0
    con = await make_connection(hub, "stripe")
    assert (await post_signed(api, hub, "stripe", con, _invoice(), "application/json")).status_code == 200
    assert REGISTRY.get_sample_value("hub_http_requests_total", labels) == before + 1


async def test_other_paths_and_methods_are_left_to_the_router(api: httpx.AsyncClient, hub: Hub) -> None:
    con = await make_connection(hub, "stripe")
    assert (await api.post(f"/webhooks/stripe/{con}/extra", content=b"{}")).status_code == 404
    assert (await api.get(f"/webhooks/stripe/{con}")).status_code == 405
    assert "/webhooks/{provider}/{connection_id}" in (await api.get("/openapi.json")).json()["paths"]
    assert await inbox_count(hub) == 0


async def test_a_deleted_connection_is_refused_at_once(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    con = await make_connection(hub, "stripe")
    creds, _ = await CredentialCache(hub.db, hub.vault).get(con)
    url = f"http://hub.test/webhooks/stripe/{con}"
    first, second = (
        signed_request(
            "stripe", _invoice().replace(b"evt_", b"evt_%d" % n, 1), "application/json", creds, url
        )
        for n in (1, 2)
    )
    assert (await api.post(f"/webhooks/stripe/{con}", content=first[0], headers=first[1])).status_code == 200
    assert (await api.delete(f"/v1/connections/{con}", headers=bearer(admin_key))).status_code == 204
    r = await api.post(
        f"/webhooks/stripe/{con}", content=second[0], headers=second[1]
    )  # within the cache's TTL
    assert r.status_code == 404 and r.json()["reason"] == "unknown_connection"
    assert await inbox_count(hub) == 1
