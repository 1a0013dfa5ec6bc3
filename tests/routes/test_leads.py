"""``PUT/GET /v1/leads/{id}`` (stored and scored) and ``POST/GET /v1/ai/models`` (per-org training)."""

from __future__ import annotations

import gzip
import json

import httpx
from temporalio.client import Client

from hub.auth import create_key
from hub.runtime import Hub
from tests.ai.synthetic import LEAD_HEADER, lead_rows, to_csv
from tests.ai.training import finished_job, training_workers
from tests.conftest import bearer

LEAD = {"email": "pat@initech.example", "company": "Initech", "source": "Reference",
        "fields": {"Lead Source": "Reference", "Occupation": "Working Professional",
                   "Total Time Spent on Website": 1500, "Tags": "Closed by Horizzon"}}


async def key(hub: Hub, org: str, role: str) -> str:
    async with hub.db.session() as session:
        return await create_key(session, org, role)


async def test_put_scores_with_the_prior_until_the_org_trains(api: httpx.AsyncClient, hub: Hub, client: Client,
                                                              admin_key: str) -> None:
    crm = await key(hub, "acme", "crm")
    put = await api.put("/v1/leads/L-1", json=LEAD, headers=bearer(crm))
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["id"] == "L-1" and body["data"]["fields"]["Lead Source"] == "Reference"
    score = body["score"]
    assert score["source"] == "prior" and score["model_version"] == "leads-prior-1"
    assert 0 <= score["low"] <= score["score"] <= score["high"] <= 100 and score["factors"]
    got = await api.get("/v1/leads/L-1", headers=bearer(await key(hub, "acme", "viewer")))
    assert got.status_code == 200 and got.json() == body

    async with training_workers(hub, client):
        upload = await api.post(
            "/v1/ai/models", headers=bearer(admin_key), data={"kind": "leads"},
            files={"file": ("leads.csv.gz", gzip.compress(to_csv(lead_rows(300), LEAD_HEADER)), "application/gzip")},
        )
        assert upload.status_code == 202, upload.text
        job = await finished_job(api, admin_key, upload.headers["location"])
    model = (await api.get(f"/v1/ai/models/{job['model_id']}", headers=bearer(admin_key))).json()
    assert model["kind"] == "leads" and model["active"] and model["version"].startswith("leads-")
    assert model["metrics"]["rows"] == 300 and "Tags" not in json.dumps(model["metrics"])

    again = (await api.put("/v1/leads/L-1", json=LEAD, headers=bearer(crm))).json()["score"]
    assert again["source"] == "model" and again["model_version"] == model["version"]
    changed = (await api.put("/v1/leads/L-1", json={**LEAD, "fields": {**LEAD["fields"], "Tags": "Ringing"}},
                             headers=bearer(crm))).json()["score"]
    assert changed["score"] == again["score"]
    listed = await api.get("/v1/ai/models", headers=bearer(crm), params={"kind": "leads"})
    assert [m["id"] for m in listed.json()] == [model["id"]]
    assert (await api.get(f"/v1/ai/models/{model['id']}", headers=bearer(crm))).json()["version"] == model["version"]


async def test_other_orgs_and_roles(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await api.put("/v1/leads/L-2", json=LEAD, headers=bearer(admin_key))
    other = await key(hub, "globex", "admin")
    missing = await api.get("/v1/leads/L-2", headers=bearer(other))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    viewer = await key(hub, "acme", "viewer")
    assert (await api.put("/v1/leads/L-3", json=LEAD, headers=bearer(viewer))).status_code == 403
    crm = await key(hub, "acme", "crm")
    denied = await api.post("/v1/ai/models", headers=bearer(crm), data={"kind": "leads"},
                            files={"file": ("l.csv", b"a,b\n", "text/csv")})
    assert denied.status_code == 403
    assert (await api.get("/v1/leads/L-2")).status_code == 401


async def test_training_problems(api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str) -> None:
    csv_bytes = to_csv(lead_rows(300), LEAD_HEADER)

    async def post(mapping: str | None, data: bytes = csv_bytes, kind: str = "leads") -> httpx.Response:
        form = {"kind": kind} | ({"mapping": mapping} if mapping is not None else {})
        return await api.post("/v1/ai/models", headers=bearer(admin_key), data=form,
                              files={"file": ("l.csv", data, "text/csv")})

    assert "not valid JSON" in (await post("{")).json()["detail"]
    assert "invalid mapping: outcome_colum" in (await post('{"outcome_colum": "x"}')).json()["detail"]
    assert (await post(None, kind="widgets")).status_code == 422
    async with training_workers(hub, client):
        few = await finished_job(api, admin_key, (await post(None, to_csv(lead_rows(20), LEAD_HEADER))).headers["location"])
        deals = await finished_job(api, admin_key, (await post(None, kind="deals")).headers["location"])
    assert few["status"] == "failed" and "at least 50 labelled leads" in few["error"]
    assert deals["status"] == "failed" and "closed deals" in deals["error"]


async def test_a_lead_is_rescored_as_engagement_and_contact_arrive(api: httpx.AsyncClient, hub: Hub) -> None:
    from ai.leads import train_leads
    from ai.service import register_model
    from tests.ai.synthetic import with_last_activity

    model = train_leads(with_last_activity(lead_rows(300)))
    await register_model(hub, "acme", model, actor="test")
    crm = await key(hub, "acme", "crm")
    created = {"email": "kim@hooli.example", "fields": {"Lead Source": "Reference", "Occupation": "Student"}}
    engaged = {**created, "fields": {**created["fields"], "TotalVisits": 5, "Total Time Spent on Website": 1400}}
    contacted = {**engaged, "fields": {**engaged["fields"], "Last Activity": "Had a Phone Conversation"}}
    seen = []
    for body in (created, engaged, contacted):
        put = await api.put("/v1/leads/L-9", json=body, headers=bearer(crm))
        got = (await api.get("/v1/leads/L-9", headers=bearer(crm))).json()["score"]
        assert put.json()["score"] == got and got["model_version"] == model.version
        seen.append((got["moment"], got["score"]))
    assert [m for m, _ in seen] == ["creation", "engagement", "contact"]
    assert len({s for _, s in seen}) == 3
