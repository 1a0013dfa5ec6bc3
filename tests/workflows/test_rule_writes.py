"""What rules change persists and goes back: fields rules set are hub-owned (they survive the CRM's next update,
a conflict is named to ``opportunity.updated`` rules), and tasks, set fields and recomputed insights reach the CRM
as signed events; the org flag ``ai.insights`` turns the per-transition insight off."""

from __future__ import annotations

import asyncio

import httpx
from temporalio.client import Client

from hub.runtime import Hub
from tests.conftest import bearer
from tests.fakes.crm_server import CrmFake
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, rule, settle

PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "two"},
    "spec": {"stages": [{"key": "open", "name": "Open", "color": "#6B7280", "probability": 0.1},
                        {"key": "won", "name": "Won", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "open", "to": "won"}]},
}  # fmt: skip
BODY = {"name": "Writes deal", "branch": "emea", "owner_role": "ae", "amount": 100.0, "forecast_category": "pipeline"}


async def crm_events(crm: CrmFake, count: int, timeout: float = 30) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(crm.events) < count:
        assert asyncio.get_running_loop().time() < deadline, crm.events
        await asyncio.sleep(0.05)
    return list(crm.events)


async def test_rule_writes_persist_and_reach_the_crm_signed(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    h = bearer(admin_key)
    await apply(
        hub, PIPELINE,
        rule("commit-new-deals", "opportunity.created", [
            {"opportunity.set_field": {"field": "forecast_category", "value": "commit"}},
            {"opportunity.add_task": {"title": "Kickoff with {{ opp.name }}"}},
            {"ai.next_action": {"reason": "new deal"}}]),
        rule("name-conflicts", "opportunity.updated", [{"opportunity.add_task": {"title": "conflict"}}],
             when="has(event.conflicts)"),
    )  # fmt: skip
    ai = AiStandIn()
    with CrmFake() as crm:
        crm.secret = (await api.post("/v1/orgs/acme/crm-signing-secret", headers=h)).json()["secret"]
        await api.patch("/v1/orgs/acme", json={"crm_callback_url": crm.callback_url}, headers=h)
        async with main_worker(hub, client, task_queue, ai):
            assert (await api.put("/v1/opportunities/writes-1", json=BODY, headers=h)).status_code == 200
            await settle(api, admin_key, "writes-1")
            events = await crm_events(crm, 3)
            assert crm.rejected == [] and crm.duplicates == 0
            by_type = {e["type"]: e for e in events}
            assert set(by_type) == {"opportunity.updated", "task.created", "insight.updated"}
            assert by_type["opportunity.updated"]["data"] == {
                "opportunity_id": "writes-1", "fields": {"forecast_category": "commit"}, "by": "automation"}
            assert by_type["task.created"]["data"]["task"]["title"] == "Kickoff with Writes deal"
            assert by_type["insight.updated"]["data"]["ai_risk_score"] == 90.0
            assert all(e["id"].startswith("evt_opportunity/acme/writes-1/") for e in events)

            # the CRM's next update: its fields change, the hub's (forecast_category, tasks) stay
            changed = {**BODY, "amount": 250.0, "forecast_category": "best_case"}
            assert (await api.put("/v1/opportunities/writes-1", json=changed, headers=h)).status_code == 200
            view = await settle(api, admin_key, "writes-1")
            opp = view["opportunity"]
            assert (opp["amount"], opp["forecast_category"]) == (250.0, "commit")
            assert [t["title"] for t in opp["tasks"]] == ["Kickoff with Writes deal", "conflict"]
            conflict = next(r for r in view["rule_runs"] if r["rule"] == "name-conflicts")
            assert conflict["fired"]
            await crm_events(crm, 4)  # task.created of the conflict rule

            calls = len(ai.calls)  # the rule's ai.next_action, and the insight after the rules' changes
            assert calls >= 2
            await api.patch("/v1/orgs/acme", json={"flags": {"ai.insights": False}}, headers=h)
            moved = await api.post("/v1/opportunities/writes-1/transitions",
                                   json={"to": "won", "actor": {"id": "u1", "role": "ae"}}, headers=h)
            assert moved.status_code == 200, moved.text
            await settle(api, admin_key, "writes-1")
            stage_changed = [e for e in await crm_events(crm, 5) if e["type"] == "stage.changed"]
            assert len(stage_changed) == 1 and len(ai.calls) == calls  # no insight with the flag off
