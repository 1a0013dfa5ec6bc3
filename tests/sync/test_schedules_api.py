"""Sync schedules (one per connection and model) and /v1/connections/{id}/syncs, on the real Temporal server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from temporalio.client import Client, ScheduleActionStartWorkflow

from activities import sync_schedules
from hub.auth import create_key
from hub.runtime import Hub
from hub.store.connections import Connection
from tests.conftest import bearer
from tests.sync.support import PagerStandIn, run_sync, seed_connection, stored, sync_workers

MODELS = ["stripe.customers", "stripe.invoices", "stripe.subscriptions"]


async def _wait_success(api: httpx.AsyncClient, key: str, conn: Connection, model: str, after: str | None = None,
                        timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await api.get(f"/v1/connections/{conn.id}/syncs", headers=bearer(key))
        assert r.status_code == 200, r.text
        sync = next(s for s in r.json()["syncs"] if s["model"] == model)
        if sync["last_success_at"] and sync["last_success_at"] != after and sync["run"]["finished_at"]:
            return sync
        assert asyncio.get_running_loop().time() < deadline, sync
        await asyncio.sleep(0.2)


async def test_ensure_schedules_creates_one_schedule_per_model_with_the_catalogue_interval_and_overrides(
    client: Client, hub: Hub
) -> None:
    conn = await seed_connection(hub, "stripe", config={"sync_intervals": {"stripe.invoices": "15m"}})
    pager = PagerStandIn([{"id": "cus_1", "object": "customer"}])
    async with sync_workers(client, hub, "stripe", pager.fetch):
        try:
            created = await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue)
            assert created == dict.fromkeys(MODELS, True)
            again = await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue)  # idempotent
            assert again == dict.fromkeys(MODELS, False)
            infos = {m: await sync_schedules.describe(client, "acme", conn.id, m) for m in MODELS}
            assert infos["stripe.customers"].interval_seconds == 3600  # providers.yaml: interval 1h
            assert infos["stripe.invoices"].interval_seconds == 900
            assert not any(i.paused for i in infos.values())
            for _ in range(150):  # each schedule started a first run right away
                if all([await stored(hub, conn, m) for m in MODELS]):
                    break
                await asyncio.sleep(0.2)
            assert [await stored(hub, conn, m) for m in MODELS] == [{"cus_1": {"id": "cus_1", "object": "customer"}}] * 3
            conn.config = {"sync_intervals": {"stripe.invoices": 7200}}
            await sync_schedules.set_interval(client, conn, "stripe.invoices", hub.settings.task_queue)
            assert (await sync_schedules.describe(client, "acme", conn.id, "stripe.invoices")).interval_seconds == 7200
        finally:
            await sync_schedules.remove_schedules(client, conn)
    assert await sync_schedules.describe(client, "acme", conn.id, "stripe.invoices") is None


async def test_a_pending_connection_has_schedules_whose_runs_wait_until_it_is_active(client: Client, hub: Hub) -> None:
    conn = await seed_connection(hub, "stripe", status="pending_auth")
    pager = PagerStandIn([{"id": "cus_1", "object": "customer"}])
    async with sync_workers(client, hub, "stripe", pager.fetch):
        try:
            assert await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue) == dict.fromkeys(
                MODELS, True)
            skipped = await run_sync(client, hub, conn, "stripe.customers", workflow_id=f"sync-test-{conn.id}")
            assert (skipped.status, skipped.reason) == ("skipped", f"connection {conn.id} is pending_auth")
            assert pager.calls == []
            async with hub.db.session() as session:  # the OAuth callback (or first token) activates it
                (await session.get(Connection, conn.id)).status = "active"
                conn.status = "active"
            await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue, run_now=True)
            for _ in range(150):
                if all([await stored(hub, conn, m) for m in MODELS]):
                    break
                await asyncio.sleep(0.2)
            assert [bool(await stored(hub, conn, m)) for m in MODELS] == [True] * 3
        finally:
            await sync_schedules.remove_schedules(client, conn)


async def test_syncs_api_shows_progress_and_runs_pauses_resumes_through_the_schedule(
    api: httpx.AsyncClient, client: Client, hub: Hub, admin_key: str
) -> None:
    conn = await seed_connection(hub, "stripe")
    url = f"/v1/connections/{conn.id}/syncs"
    r = await api.get(url, headers=bearer(admin_key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["model"] for s in body["syncs"]] == MODELS and body["provider"] == "stripe"
    assert body["connection_status"] == "active"
    assert all(s["state"] == "idle" and s["schedule"] is None and s["last_success_at"] is None for s in body["syncs"])

    pager = PagerStandIn([{"id": f"cus_{i}", "object": "customer"} for i in range(7)])
    async with sync_workers(client, hub, "stripe", pager.fetch):
        try:
            r = await api.post(f"{url}/stripe.customers:run", headers=bearer(admin_key))
            assert r.status_code == 202, r.text
            sync = await _wait_success(api, admin_key, conn, "stripe.customers")
            assert sync["state"] == "idle" and sync["records_stored"] == 7 and sync["records_seen"] >= 7
            assert sync["run"]["pages"] >= 1 and sync["run"]["records"] == 7 and sync["cursor"] == "7"
            assert sync["schedule"]["interval_seconds"] == 3600 and sync["schedule"]["next_run_at"]
            metrics = (await api.get("/metrics")).text
            assert 'hub_sync_pages_total{model="stripe.customers",provider="stripe"}' in metrics
            assert f'hub_sync_run_records{{connection="{conn.id}",model="stripe.customers"}} 7.0' in metrics

            r = await api.post(f"{url}/stripe.customers:pause", headers=bearer(admin_key))
            assert r.status_code == 200, r.text
            sync = next(s for s in (await api.get(url, headers=bearer(admin_key))).json()["syncs"]
                        if s["model"] == "stripe.customers")
            assert sync["state"] == "paused" and sync["schedule"]["paused"] and sync["schedule"]["next_run_at"] is None

            pager.records.append({"id": "cus_7", "object": "customer"})  # run now works while paused
            r = await api.post(f"{url}/stripe.customers:run", headers=bearer(admin_key))
            assert r.status_code == 202
            sync = await _wait_success(api, admin_key, conn, "stripe.customers", after=sync["last_success_at"])
            assert sync["records_stored"] == 8 and sync["run"]["records"] == 1 and sync["state"] == "paused"

            r = await api.post(f"{url}/stripe.customers:resume", headers=bearer(admin_key))
            assert r.status_code == 200
            sync = next(s for s in (await api.get(url, headers=bearer(admin_key))).json()["syncs"]
                        if s["model"] == "stripe.customers")
            assert sync["state"] == "idle" and not sync["schedule"]["paused"]

            r = await api.patch(f"{url}/stripe.customers", json={"interval": "30m"}, headers=bearer(admin_key))
            assert r.status_code == 200, r.text
            assert r.json()["schedule"]["interval_seconds"] == 1800
            r = await api.patch(f"{url}/stripe.customers", json={"interval": "soon"}, headers=bearer(admin_key))
            assert r.status_code == 422
        finally:
            await sync_schedules.remove_schedules(client, conn)


async def test_creating_a_connection_schedules_its_syncs_and_deleting_it_removes_them(
    api: httpx.AsyncClient, client: Client, hub: Hub, admin_key: str
) -> None:
    pager = PagerStandIn([{"id": "cus_1", "object": "customer"}])
    async with sync_workers(client, hub, "stripe", pager.fetch):
        r = await api.post("/v1/connections", headers=bearer(admin_key), json={
            "provider": "stripe", "name": "Stripe", "credentials": {"api_key": "sk_test_x"}})
        assert r.status_code == 201, r.text
        conn = await _connection(hub, r.json()["id"])
        try:
            assert conn.status == "active"
            for model in MODELS:
                assert await sync_schedules.describe(client, "acme", conn.id, model) is not None
            await _wait_success(api, admin_key, conn, "stripe.customers")  # the first run started right away
        finally:
            assert (await api.delete(f"/v1/connections/{conn.id}", headers=bearer(admin_key))).status_code == 204
    assert [await sync_schedules.describe(client, "acme", conn.id, m) for m in MODELS] == [None] * 3


async def _connection(hub: Hub, connection_id: str) -> Connection:
    async with hub.db.session() as session:
        return await session.get(Connection, connection_id)


async def test_syncs_api_is_scoped_to_the_org_and_the_role(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    conn = await seed_connection(hub, "stripe")
    other = await seed_connection(hub, "stripe", org_id="globex")
    async with hub.db.session() as session:
        viewer = await create_key(session, "acme", "viewer")
    assert (await api.get(f"/v1/connections/{other.id}/syncs", headers=bearer(admin_key))).status_code == 404
    r = await api.post(f"/v1/connections/{other.id}/syncs/stripe.customers:run", headers=bearer(admin_key))
    assert r.status_code == 404
    r = await api.post(f"/v1/connections/{conn.id}/syncs/gong.calls:run", headers=bearer(admin_key))
    assert r.status_code == 404 and "offers no sync model" in r.json()["detail"]
    assert (await api.get(f"/v1/connections/{conn.id}/syncs", headers=bearer(viewer))).status_code == 200
    r = await api.post(f"/v1/connections/{conn.id}/syncs/stripe.customers:pause", headers=bearer(viewer))
    assert r.status_code == 403
    pending = await seed_connection(hub, "stripe", status="pending_auth")
    r = await api.post(f"/v1/connections/{pending.id}/syncs/stripe.customers:run", headers=bearer(admin_key))
    assert r.status_code == 409 and "pending_auth" in r.json()["detail"]


def test_interval_overrides_parse_and_never_go_below_a_minute() -> None:
    hour = timedelta(hours=1)
    assert sync_schedules.interval_of(None, hour) == hour
    assert sync_schedules.interval_of("15m", hour) == timedelta(minutes=15)
    assert sync_schedules.interval_of(120, hour) == timedelta(minutes=2)
    assert sync_schedules.interval_of("5s", hour) == timedelta(minutes=1)


async def test_scheduled_syncs_take_their_orgs_turn_on_the_shared_queue(client: Client, hub: Hub) -> None:
    """Every schedule's runs carry the org's fairness key (one org's hundred syncs wait their turn with another
    org's one), and a schedule made before the key had it is brought up to date by the next ensure."""
    from temporalio.common import Priority

    from activities.sync_types import sync_schedule_id

    conn = await seed_connection(hub, "stripe")
    older = sync_schedules._schedule(conn, "stripe.customers", timedelta(hours=1), hub.settings.task_queue)
    assert isinstance(older.action, ScheduleActionStartWorkflow)
    older.action.priority = Priority()  # as made before: no fairness key
    await client.create_schedule(sync_schedule_id("acme", conn.id, "stripe.customers"), older)
    pager = PagerStandIn([{"id": "cus_1", "object": "customer"}])
    async with sync_workers(client, hub, "stripe", pager.fetch):
        try:
            created = await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue, run_now=True)
            assert created == {"stripe.customers": False, "stripe.invoices": True, "stripe.subscriptions": True}
            for model in MODELS:
                handle = client.get_schedule_handle(sync_schedule_id("acme", conn.id, model))
                action = (await handle.describe()).schedule.action
                assert isinstance(action, ScheduleActionStartWorkflow)
                assert action.priority.fairness_key == "org:acme", model
                for _ in range(150):  # ... and so do the runs they started
                    if (recent := (await handle.describe()).info.recent_actions):
                        break
                    await asyncio.sleep(0.2)
                run = await client.get_workflow_handle(recent[0].action.workflow_id).describe()
                assert run.raw_description.workflow_execution_info.priority.fairness_key == "org:acme", model
        finally:
            await sync_schedules.remove_schedules(client, conn)
