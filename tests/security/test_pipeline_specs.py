"""The views of Updates' answers take the pinned pipeline's spec from a cache the API process keeps for every org
(the answers leave it out): each org's views show its own pipeline, even when two orgs' pipelines share a name and
a version, and one org's cached spec never stands in for another's."""

from __future__ import annotations

import httpx
from temporalio.client import Client

from hub.auth import create_key
from hub.runtime import Hub
from tests.conftest import bearer
from tests.workflows.opportunity_kit import AiStandIn, apply, opportunity_body, workers

AE = {"id": "u-ae", "role": "ae"}


def _pipeline(names: tuple[str, str]) -> dict:
    stages = [{"key": "prospect", "name": names[0], "color": "#6B7280", "probability": 0.1},
              {"key": "engage", "name": names[1], "color": "#2563EB", "probability": 0.3}]
    return {"apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "shared-name"},
            "spec": {"stages": stages, "transitions": [{"from": "prospect", "to": "engage"}]}}  # fmt: skip


async def test_two_orgs_pipelines_of_one_name_and_version_each_show_their_own(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    from routes import opportunities as routes

    await apply(hub, _pipeline(("Acme prospect", "Acme engage")))  # org acme, v1
    await apply(hub, _pipeline(("Rival prospect", "Rival engage")), org="rival")  # org rival, v1 too
    async with hub.db.session() as s:
        rival_key = await create_key(s, "rival", "admin")
    routes._SPECS.clear()
    oid = f"opp-{task_queue}"
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        for key, org in ((admin_key, "Acme"), (rival_key, "Rival")):  # the same opportunity id in both orgs
            put = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=bearer(key))
            assert put.status_code == 200, put.text
            assert put.json()["pipeline"] == {"name": "shared-name", "version": 1,
                                              "content_hash": put.json()["pipeline"]["content_hash"]}
            moved = await api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "engage", "actor": AE},
                                   headers=bearer(key))
            assert moved.status_code == 200, moved.text
            assert [s["name"] for s in moved.json()["stages"]] == [f"{org} prospect", f"{org} engage"]
            assert moved.json()["stage_name"] == f"{org} engage"
    assert {k[0] for k in routes._SPECS} == {"acme", "rival"}  # one entry per org, each its own
