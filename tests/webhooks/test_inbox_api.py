"""GET /v1/webhook-events (filters, pagination), GET …/{id} (no secrets), POST …/{id}:replay, retention."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
from sqlalchemy import update

from hub.auth import create_key
from hub.runtime import Hub
from hub.store import inbox
from hub.store.base import utcnow
from hub.store.inbox import WebhookEvent
from tests.conftest import bearer, shared_data
from tests.webhooks.conftest import inbox_rows, make_connection, post_signed


def _stripe(event_id: str, kind: str = "invoice.paid") -> bytes:
    doc = json.loads(shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes())
    doc["id"], doc["type"] = event_id, kind
    return json.dumps(doc).encode()


async def _seed(api: httpx.AsyncClient, hub: Hub) -> tuple[str, str]:
    stripe, slack = await make_connection(hub, "stripe"), await make_connection(hub, "slack")
    for n in range(5):
        await post_signed(api, hub, "stripe", stripe, _stripe(f"evt_{n}", "invoice.paid" if n % 2 else "charge.failed"),
                          "application/json")
    body = shared_data("webhooks", "slack", "event_callback.app_mention.json").read_bytes()
    await post_signed(api, hub, "slack", slack, body, "application/json")
    return stripe, slack


async def test_list_filters_and_paginates_newest_first(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await _seed(api, hub)
    h = bearer(admin_key)
    everything = (await api.get("/v1/webhook-events", headers=h)).json()
    assert len(everything["items"]) == 6 and everything["next_cursor"] is None
    assert everything["items"][0]["provider"] == "slack"  # newest first
    stripe = (await api.get("/v1/webhook-events", params={"provider": "stripe"}, headers=h)).json()["items"]
    assert len(stripe) == 5
    paid = (await api.get("/v1/webhook-events", params={"type": "invoice.paid"}, headers=h)).json()["items"]
    assert sorted(i["event_id"] for i in paid) == ["evt_1", "evt_3"]
    assert (await api.get("/v1/webhook-events", params={"status": "done"}, headers=h)).json()["items"] == []
    seen, cursor = [], None
    while True:
        page = (await api.get("/v1/webhook-events", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                              headers=h)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["id"] for i in everything["items"]]
    future = (utcnow() + timedelta(minutes=1)).isoformat()
    assert (await api.get("/v1/webhook-events", params={"since": future}, headers=h)).json()["items"] == []
    assert len((await api.get("/v1/webhook-events", params={"until": future}, headers=h)).json()["items"]) == 6
    assert (await api.get("/v1/webhook-events", params={"status": "bogus"}, headers=h)).status_code == 422
    assert (await api.get("/v1/webhook-events", params={"cursor": "%%%"}, headers=h)).status_code == 400


async def test_detail_shows_body_and_headers_but_no_signature_or_secret(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    await _seed(api, hub)
    [row] = await inbox_rows(hub, provider="slack")
    r = await api.get(f"/v1/webhook-events/{row.id}", headers=bearer(admin_key))
    assert r.status_code == 200
    detail = r.json()
    assert detail["event_id"] == "Ev111" and detail["body_encoding"] == "utf-8"
    assert json.loads(detail["body"])["event"]["text"] == "<@W111> Hi there!"
    assert "x-slack-signature" not in detail["headers"] and "x-slack-request-timestamp" in detail["headers"]
    assert "verification_token" not in r.text and "whsec" not in r.text
    assert detail["attempts"] == 0 and detail["errors"] == []


async def test_other_orgs_events_are_404_and_viewers_cannot_replay(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    other = await make_connection(hub, "stripe", org="globex")
    await post_signed(api, hub, "stripe", other, _stripe("evt_g"), "application/json")
    [row] = await inbox_rows(hub)
    h = bearer(admin_key)
    assert (await api.get("/v1/webhook-events", headers=h)).json()["items"] == []
    assert (await api.get(f"/v1/webhook-events/{row.id}", headers=h)).status_code == 404
    assert (await api.post(f"/v1/webhook-events/{row.id}:replay", headers=h)).status_code == 404
    async with hub.db.session() as session:
        viewer = await create_key(session, "globex", "viewer")
    assert (await api.get(f"/v1/webhook-events/{row.id}", headers=bearer(viewer))).status_code == 200
    assert (await api.post(f"/v1/webhook-events/{row.id}:replay", headers=bearer(viewer))).status_code == 403


async def test_replay_requeues_a_finished_event_as_a_new_generation(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    stripe, _ = await _seed(api, hub)
    [row] = await inbox_rows(hub, event_id="evt_1")
    h = bearer(admin_key)
    r = await api.post(f"/v1/webhook-events/{row.id}:replay", headers=h)
    assert r.status_code == 409 and "pending" in r.json()["detail"]
    async with hub.db.session() as session:
        await inbox.finish(session, row.id, "ignored", {"reason": "test"})
    r = await api.post(f"/v1/webhook-events/{row.id}:replay", headers=h)
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["generation"]) == ("pending", 1)
    [row] = await inbox_rows(hub, event_id="evt_1")
    assert row.status == "pending" and row.completed_at is None


async def test_purge_keeps_unfinished_and_recent_events(api: httpx.AsyncClient, hub: Hub) -> None:
    await _seed(api, hub)
    rows = await inbox_rows(hub)
    old = utcnow() - timedelta(days=8)
    async with hub.db.session() as session:
        await session.execute(update(WebhookEvent).values(received_at=old))
        await inbox.finish(session, rows[0].id, "done", {})
        await inbox.finish(session, rows[1].id, "ignored", {})
        await session.execute(update(WebhookEvent).where(WebhookEvent.id == rows[2].id).values(status="dead"))
    async with hub.db.session() as session:
        assert await inbox.purge(session, retention=timedelta(days=1)) == 2  # never less than 7 days
    assert {r.id for r in await inbox_rows(hub)} == {r.id for r in rows[2:]}
