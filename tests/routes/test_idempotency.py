"""Idempotency-Key on /v1 writes: a retry replays the first answer; misuse is refused."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from hub.runtime import Hub
from hub.store.orgs import AuditEntry, IdempotencyRecord
from tests.conftest import bearer


async def _audits(hub: Hub) -> int:
    async with hub.db.session() as s:
        return await s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "org.updated"))


async def test_retry_with_same_key_replays_first_answer_and_runs_once(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    headers = {**bearer(admin_key), "Idempotency-Key": "k-1"}
    first = await api.patch("/v1/orgs/acme", json={"name": "Acme One"}, headers=headers)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    # the org changes meanwhile; the retry must still answer what the first request answered
    await api.patch("/v1/orgs/acme", json={"name": "Acme Two"}, headers=bearer(admin_key))
    again = await api.patch("/v1/orgs/acme", json={"name": "Acme One"}, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.json()["name"] == "Acme One"
    assert await _audits(hub) == 2  # the first request and the un-keyed one; the retry ran nothing
    from hub.idempotency import scoped_key

    async with hub.db.session() as s:
        row = await s.get(IdempotencyRecord, ("acme", scoped_key(admin_key.split("_")[1], "k-1")))
    assert "Acme One" not in str(row.response)  # stored answers are sealed by the vault


async def test_same_key_different_request_is_422(api: httpx.AsyncClient, admin_key: str) -> None:
    headers = {**bearer(admin_key), "Idempotency-Key": "k-2"}
    assert (await api.patch("/v1/orgs/acme", json={"name": "A"}, headers=headers)).status_code == 200
    r = await api.patch("/v1/orgs/acme", json={"name": "B"}, headers=headers)
    assert r.status_code == 422 and "different request" in r.json()["detail"]


async def test_key_in_flight_is_409_and_keys_are_per_org(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    from hub.auth import create_key
    from hub.idempotency import request_hash, scoped_key

    body = b'{"name":"A"}'
    async with hub.db.session() as s:
        s.add(IdempotencyRecord(org_id="acme", key=scoped_key(admin_key.split("_")[1], "k-3"), request_hash=request_hash("PATCH", "/v1/orgs/acme", b"",
                                                                                    body), status_code=0, response={}))
        other = await create_key(s, "globex", "admin")
    headers = {**bearer(admin_key), "Idempotency-Key": "k-3", "content-type": "application/json"}
    r = await api.patch("/v1/orgs/acme", content=body, headers=headers)
    assert r.status_code == 409 and "in progress" in r.json()["detail"]
    # the same key string in another org is another key
    r = await api.patch("/v1/orgs/globex", content=b'{"name":"G"}',
                        headers={**bearer(other), "Idempotency-Key": "k-3", "content-type": "application/json"})
    assert r.status_code == 200 and r.json()["name"] == "G"


async def test_refusals_are_replayed_but_not_server_errors(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    headers = {**bearer(admin_key), "Idempotency-Key": "k-4"}
    r = await api.patch("/v1/orgs/acme", json={"crm_callback_url": "not a url"}, headers=headers)
    assert r.status_code == 422
    again = await api.patch("/v1/orgs/acme", json={"crm_callback_url": "not a url"}, headers=headers)
    assert again.status_code == 422 and again.headers["idempotent-replayed"] == "true"
    from hub.idempotency import finish

    async with hub.db.session() as s:
        s.add(IdempotencyRecord(org_id="acme", key="k-5", request_hash="x", status_code=0, response={}))
    await finish(hub, "acme", "k-5", 503, "application/json", b"{}")
    async with hub.db.session() as s:
        assert await s.get(IdempotencyRecord, ("acme", "k-5")) is None  # released: a retry runs again
