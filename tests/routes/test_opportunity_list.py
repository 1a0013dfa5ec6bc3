"""``GET /v1/opportunities`` (filters, cursor), ``…/transitions/{to}:check``, ``:close-lost`` and ``:archive``."""

from __future__ import annotations

import httpx
from temporalio.client import Client

from hub.runtime import Hub
from tests.conftest import bearer
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, opportunity_body, peak, settle

AE = {"id": "u-ae", "role": "ae"}


async def test_list_check_close_lost_and_archive(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, peak())
    async with main_worker(hub, client, task_queue, AiStandIn()):
        for oid, branch, owner in (("o1", "emea", "u1"), ("o2", "emea", "u2"), ("o3", "amer", "u1")):
            body = opportunity_body(name=f"Deal {oid}", branch=branch, owner={"id": owner, "name": owner})
            assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
            await settle(api, admin_key, oid)
        listed = (await api.get("/v1/opportunities", headers=h)).json()
        assert [(o["id"], o["stage"], o["branch"], o["owner"]) for o in listed["items"]] == [
            ("o1", "prospect", "emea", "u1"), ("o2", "prospect", "emea", "u2"), ("o3", "prospect", "amer", "u1")]
        assert listed["next_cursor"] is None and listed["items"][0]["pipeline"] == "peak"
        mine = (await api.get("/v1/opportunities?branch=emea&owner=u1&stage=prospect&pipeline=peak", headers=h)).json()
        assert [o["id"] for o in mine["items"]] == ["o1"]
        assert (await api.get("/v1/opportunities?stage=keep", headers=h)).json()["items"] == []
        first = (await api.get("/v1/opportunities?limit=2", headers=h)).json()
        rest = (await api.get(f"/v1/opportunities?limit=2&cursor={first['next_cursor']}", headers=h)).json()
        assert [o["id"] for o in first["items"] + rest["items"]] == ["o1", "o2", "o3"] and rest["next_cursor"] is None

        check = await api.get("/v1/opportunities/o1/transitions/engage:check", headers=h)
        assert check.status_code == 200, check.text
        answer = check.json()
        assert answer["to"] == "engage" and answer["allowed"] is False
        codes = {u["code"] for u in answer["unmet"]}
        assert "checklist_incomplete" in codes and "criteria_not_met" in codes
        assert (await api.get("/v1/opportunities/o1", headers=h)).json()["stage"] == "prospect"  # nothing moved
        skip = (await api.get("/v1/opportunities/o1/transitions/keep:check?role=manager", headers=h)).json()
        assert "transition_not_allowed" in {u["code"] for u in skip["unmet"]}
        missing = await api.get("/v1/opportunities/nope/transitions/engage:check", headers=h)
        assert missing.status_code == 404

        no_reason = await api.post("/v1/opportunities/o2:close-lost", json={"reason": "", "actor": AE}, headers=h)
        assert no_reason.status_code == 422
        closed = await api.post("/v1/opportunities/o2:close-lost", json={"reason": "Budget cut", "actor": AE},
                                headers=h)
        assert closed.status_code == 200, closed.text
        assert closed.json()["closed"]["outcome"] == "lost" and closed.json()["closed"]["reason"] == "Budget cut"
        again = await api.post("/v1/opportunities/o2:close-lost", json={"reason": "x", "actor": AE}, headers=h)
        assert again.status_code == 422 and again.json()["unmet"][0]["code"] == "already_closed"
        after = (await api.get("/v1/opportunities/o2/transitions/engage:check", headers=h)).json()
        assert "closed" in {u["code"] for u in after["unmet"]}

        assert (await api.post("/v1/opportunities/o3:archive", headers=h)).json()["archived"] is True
        await settle(api, admin_key, "o3")
        await settle(api, admin_key, "o2")
    active = (await api.get("/v1/opportunities", headers=h)).json()["items"]
    assert [o["id"] for o in active] == ["o1", "o2"] and active[1]["closed"]["reason"] == "Budget cut"
    archived = (await api.get("/v1/opportunities?archived=true", headers=h)).json()["items"]
    assert [o["id"] for o in archived] == ["o3"]
