"""Retraining on the real Temporal server: the org's schedule, champion / challenger in ``ai_models``, pin and
roll back through the API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.client import Client

from activities.ai_types import RetrainResult, ai_retrain_schedule_id
from hub.auth import ensure_org
from hub.runtime import Hub
from hub.store.ai import Lead
from hub.temporal import delete_schedule
from tests.ai.synthetic import lead_rows
from tests.ai.training import training_workers
from tests.conftest import bearer


async def store_leads(hub: Hub, org: str, n: int = 300) -> None:
    """Leads as the CRM sent them, with their outcome (``Converted``) once known, one a day."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    async with hub.db.session() as session:
        await ensure_org(session, org)
        for i, row in enumerate(lead_rows(n, seed=11)):
            session.add(Lead(org_id=org, id=row["Prospect ID"], data={"fields": row},
                             created_at=start + timedelta(days=i), updated_at=start + timedelta(days=i)))


async def run_once(api: httpx.AsyncClient, client: Client, key: str, org: str) -> RetrainResult:
    """Trigger the org's schedule and wait for the run it starts."""
    handle = client.get_schedule_handle(ai_retrain_schedule_id(org))
    before = len((await handle.describe()).info.recent_actions)
    assert (await api.post("/v1/ai/retraining:run", headers=bearer(key))).status_code == 202
    for _ in range(200):
        actions = (await handle.describe()).info.recent_actions
        if len(actions) > before:
            started = actions[-1].action.workflow_id
            run = await client.get_workflow_handle(started).describe()  # the org's turn on the shared queue
            assert run.raw_description.workflow_execution_info.priority.fairness_key == f"org:{org}"
            return await client.get_workflow_handle(started, result_type=RetrainResult).result()
        await asyncio.sleep(0.1)
    raise AssertionError("the schedule started no run")


async def test_retraining_promotes_pins_and_rolls_back(api: httpx.AsyncClient, hub: Hub, client: Client,
                                                       admin_key: str) -> None:
    h = bearer(admin_key)
    # the Temporal server is the session's: another test may have left acme's schedule there
    await delete_schedule(client, ai_retrain_schedule_id("acme"))
    assert (await api.post("/v1/ai/retraining:run", headers=h)).status_code == 404
    await store_leads(hub, "acme")
    put = await api.put("/v1/ai/retraining", headers=h, json={"every_hours": 168, "paused": True})
    assert put.status_code == 200 and put.json() == {"every_hours": 168, "paused": True}
    async with training_workers(hub, client):
        first = await run_once(api, client, admin_key, "acme")
        leads = first.outcomes["leads"]
        assert leads["promoted"] and leads["challenger_brier"] < leads["base_rate_brier"]
        assert "not retrained" in first.outcomes["deals"]["reason"]  # no closed opportunities yet
        [model] = (await api.get("/v1/ai/models", headers=h, params={"kind": "leads"})).json()
        assert model["id"] == leads["model_id"] and model["active"] and model["origin"] == "retrain"
        assert model["metrics"]["challenge"]["window_rows"] == 60

        async with hub.db.session() as session:  # a newer lead changes the history: a new challenger
            session.add(Lead(org_id="acme", id="late", data={"fields": {**lead_rows(1, seed=99)[0], "Converted": "1"}},
                             created_at=datetime(2026, 1, 1, tzinfo=UTC), updated_at=datetime(2026, 1, 1, tzinfo=UTC)))
        pinned = await api.patch(f"/v1/ai/models/{model['id']}", headers=h, json={"pinned": True})
        assert pinned.status_code == 200 and pinned.json()["pinned"]
        second = await run_once(api, client, admin_key, "acme")
        assert second.outcomes["leads"] == {"promoted": False, "reason": f"the active model {model['id']} is pinned"}

        await api.patch(f"/v1/ai/models/{model['id']}", headers=h, json={"pinned": False})
        third = await run_once(api, client, admin_key, "acme")
    listed = (await api.get("/v1/ai/models", headers=h, params={"kind": "leads"})).json()
    assert len(listed) == 2 and {m["id"] for m in listed} >= {model["id"], third.outcomes["leads"]["model_id"]}
    active = [m for m in listed if m["active"]]
    assert len(active) == 1 and active[0]["id"] == (third.outcomes["leads"]["model_id"]
                                                    if third.outcomes["leads"]["promoted"] else model["id"])
    back = await api.patch(f"/v1/ai/models/{model['id']}", headers=h, json={"active": True})
    assert back.status_code == 200 and back.json()["active"]
    assert [m["id"] for m in (await api.get("/v1/ai/models", headers=h)).json() if m["active"]] == [model["id"]]
    assert (await api.patch(f"/v1/ai/models/{model['id']}", headers=h, json={"active": False})).status_code == 422
    other = await api.patch(f"/v1/ai/models/{model['id']}", headers=bearer(await viewer(hub)), json={"pinned": True})
    assert other.status_code == 403


async def viewer(hub: Hub) -> str:
    from hub.auth import create_key

    async with hub.db.session() as session:
        return await create_key(session, "acme", "viewer")
