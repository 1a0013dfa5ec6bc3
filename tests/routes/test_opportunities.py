"""/v1/opportunities end to end: the PEAK journey through the API with the Graph, Slack and CRM fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from temporalio.client import Client, WorkflowHistory

from activities.opportunity_types import DomainEvent, DomainSource, workflow_id
from connectors.sharepoint import folder_plan
from hub.runtime import Hub
from tests.conftest import bearer
from tests.fakes.crm_server import CrmFake
from tests.fakes.graph_server import GraphFake
from tests.fakes.slack_server import SlackFake
from tests.workflows.opportunity_kit import (
    SLACK_TOKEN,
    AiStandIn,
    apply,
    connect_fakes,
    folder_requests,
    graph_fake,
    opportunity_body,
    peak,
    rule,
    settle,
    stage_folder_requests,
    workers,
)
from workflows.opportunity import OpportunityWorkflow

AE = {"id": "u-ae", "role": "ae"}


@pytest.fixture
def graph() -> Iterator[GraphFake]:
    with graph_fake() as fake:
        yield fake


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    with SlackFake(tokens=(SLACK_TOKEN,)) as fake:
        yield fake


@pytest.fixture
def oid(task_queue: str) -> str:
    """An opportunity id unique to the test (workflow ids live as long as the session's Temporal server)."""
    return f"opp-{task_queue}"


@pytest.fixture
def crm() -> Iterator[CrmFake]:
    with CrmFake() as fake:
        yield fake


def codes(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [(u["code"], u["field"]) for u in response.json()["unmet"]]


async def test_prospect_to_keep_through_the_api(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str,
    graph: GraphFake, slack: SlackFake, crm: CrmFake,
) -> None:
    h = bearer(admin_key)
    await apply(
        hub, peak(),
        rule("big-deal-to-acquire", "stage.entered", [
            {"slack.post_message": {"channel": "#deals", "text": "{{ opp.name }} entered Acquire"}},
            {"ai.next_action": {}}], stage="acquire", when="opp.amount >= 50000.0"),
        rule("small-deal-to-acquire", "stage.entered", [
            {"slack.post_message": {"channel": "#general", "text": "small"}}], stage="acquire",
            when="opp.amount < 50000.0"),
        rule("review-updates", "opportunity.updated", [{"opportunity.add_task": {"title": "Review {{ opp.name }}"}}]),
        rule("signed", "contract.signed", [
            {"slack.post_message": {"channel": "#deals", "text": "{{ opp.name }}: contract signed"}}]),
    )
    await connect_fakes(hub, graph, slack)
    crm.secret = (await api.post("/v1/orgs/acme/crm-signing-secret", headers=h)).json()["secret"]
    r = await api.patch("/v1/orgs/acme", json={"crm_callback_url": crm.callback_url}, headers=h)
    assert r.status_code == 200

    async def move(to: str, actor: dict = AE, **headers: str) -> httpx.Response:
        return await api.post(f"/v1/opportunities/{oid}/transitions", json={"to": to, "actor": actor},
                              headers={**h, **headers})

    async def check(items: list[str]) -> None:
        r = await api.post(f"/v1/opportunities/{oid}/checklist", json={"items": dict.fromkeys(items, True)},
                           headers=h)
        assert r.status_code == 200, r.text

    async with workers(hub, client, task_queue):  # the real AI activity (local model, no OpenAI)
        r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["stage"] == "prospect" and r.json()["pipeline"]["name"] == "peak"
        await settle(api, admin_key, oid)
        handle = client.get_workflow_handle(workflow_id("acme", oid))
        events_before = len((await handle.fetch_history()).events)
        # the same body again: nothing happens, not even a history event
        assert (await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)).status_code == 200
        assert len((await handle.fetch_history()).events) == events_before

        # refusals in Prospect, each reason named
        assert codes(await move("acquire")) == [("transition_not_allowed", "to")]
        assert codes(await move("engage")) == [
            ("checklist_incomplete", "checklist.icp_fit_confirmed"),
            ("checklist_incomplete", "checklist.pain_hypothesis_written"),
            ("checklist_incomplete", "checklist.first_meeting_booked"),
            ("criteria_not_met", "when")]
        await check(["icp_fit_confirmed", "pain_hypothesis_written", "first_meeting_booked"])
        refused = await move("engage")
        assert codes(refused) == [("criteria_not_met", "when")]
        assert "identify_pain" in refused.json()["unmet"][0]["message"]
        assert (await api.get(f"/v1/opportunities/{oid}", headers=h)).json()["stage"] == "prospect"
        # a refusal leaves no workflow history: the audit log keeps who asked, for what, and what was unmet
        audit = await api.get("/v1/audit", params={"action": "opportunity.transition_refused",
                                                   "resource": f"opportunity/{oid}"}, headers=h)  # fmt: skip
        assert audit.status_code == 200, audit.text
        kept = [(e["detail"]["to"], e["detail"]["person"], [u["code"] for u in e["detail"]["unmet"]])
                for e in reversed(audit.json()["items"])]  # fmt: skip
        assert kept == [("acquire", AE, ["transition_not_allowed"]),
                        ("engage", AE, ["checklist_incomplete"] * 3 + ["criteria_not_met"]),
                        ("engage", AE, ["criteria_not_met"])]  # fmt: skip

        # the CRM updates the opportunity: opportunity.updated rules run
        r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(meddpicc={"identify_pain": 2}), headers=h)
        assert r.status_code == 200 and r.json()["opportunity"]["meddpicc"]["identify_pain"] == 2
        first = await move("engage", **{"Idempotency-Key": "move-1"})
        assert first.status_code == 200, first.text
        assert first.json()["stage"] == "engage" and first.json()["history"][-1]["actor"] == AE
        retried = await move("engage", **{"Idempotency-Key": "move-1"})
        assert retried.status_code == 200 and retried.headers["idempotent-replayed"] == "true"
        assert retried.json() == first.json()

        # refusals in Engage: wrong role, checklist, documents and entry criteria all at once
        assert codes(await move("acquire", {"id": "u-sdr", "role": "sdr"})) == [
            ("role_not_allowed", "actor.role"),
            ("checklist_incomplete", "checklist.discovery_call_done"),
            ("checklist_incomplete", "checklist.champion_identified"),
            ("checklist_incomplete", "checklist.metrics_quantified"),
            ("checklist_incomplete", "checklist.economic_buyer_identified"),
            ("document_missing", "documents.discovery_notes"),
            ("document_missing", "documents.mutual_action_plan"),
            ("criteria_not_met", "when")]
        await check(["discovery_call_done", "champion_identified", "metrics_quantified", "economic_buyer_identified"])
        r = await api.post(f"/v1/opportunities/{oid}/documents",
                           json={"documents": {"discovery_notes": True, "mutual_action_plan": True}}, headers=h)
        assert r.status_code == 202
        bad = await api.post(f"/v1/opportunities/{oid}/documents", json={"documents": {"nda": True}}, headers=h)
        assert bad.status_code == 422 and "nda" in bad.json()["detail"]
        await api.put(f"/v1/opportunities/{oid}", headers=h, json=opportunity_body(
            meddpicc={"identify_pain": 2, "metrics": 3, "champion": 2, "economic_buyer": 1}))
        await settle(api, admin_key, oid)
        assert codes(await move("acquire", {"id": "u-sdr", "role": "sdr"})) == [("role_not_allowed", "actor.role")]
        assert (await move("acquire")).status_code == 200

        # refusals in Acquire, then the contract is signed (a DocuSign webhook's domain event)
        assert [c for c, _ in codes(await move("keep"))] == ["checklist_incomplete"] * 4 + [
            "document_missing"] * 3 + ["criteria_not_met"]
        await check(["proposal_presented", "decision_process_confirmed", "paper_process_confirmed",
                     "legal_review_done"])
        await api.post(f"/v1/opportunities/{oid}/documents", json={"documents": {"proposal": True, "order_form": True}},
                       headers=h)
        signed = DomainEvent(type="contract.signed", data={"envelope_id": "env-1", "opportunity_id": oid},
                             source=DomainSource(provider="docusign", event_id="evt-env-1"))
        await handle.signal(OpportunityWorkflow.domain_event, signed)
        await handle.signal(OpportunityWorkflow.domain_event, signed)  # a duplicate delivery is ignored
        await api.put(f"/v1/opportunities/{oid}", headers=h, json=opportunity_body(
            meddpicc={"identify_pain": 2, "metrics": 3, "champion": 2, "economic_buyer": 1, "paper_process": 2}))
        await settle(api, admin_key, oid)
        assert (await move("keep")).status_code == 200
        view = await settle(api, admin_key, oid)

    # SharePoint: the per-opportunity tree, each stage's folders created exactly once, templates copied
    stages = {s["key"]: s for s in peak()["spec"]["stages"]}
    expected = folder_plan(f"Opportunities/{oid}", [f for s in stages.values() for f in s["folders"]])
    files = {p for p in (graph.path_of(i["id"]) for i in graph.items.values() if not i["folder"])}
    assert graph.folder_paths() == sorted(expected + ["Templates"])
    assert folder_requests(graph) == stage_folder_requests(oid, list(stages.values()))
    assert f"Opportunities/{oid}/01 Prospect/Research/Globex - Account research.docx" in files
    assert f"Opportunities/{oid}/04 Keep/Success plan/Globex - Success plan.docx" in files
    assert len([f for f in files if f.startswith("Opportunities/")]) == 6

    # CRM: three signed stage.changed events, each received once, carrying the AI insight; what rules did
    # (tasks, recomputed insights) as their own signed events
    assert crm.rejected == [] and crm.duplicates == 0 and len(crm.deliveries) == len(crm.events)
    changes = [e for e in crm.events if e["type"] == "stage.changed"]
    assert [(e["data"]["from_stage"], e["data"]["to_stage"]) for e in changes] == [
        ("prospect", "engage"), ("engage", "acquire"), ("acquire", "keep")]
    assert {e["type"] for e in crm.events} - {"stage.changed"} <= {"task.created", "insight.updated"}
    assert all(0 <= e["data"]["ai_risk_score"] <= 100 and e["data"]["ai_next_action"]["title"] for e in changes)

    # Slack: one post for the big deal entering Acquire, one for the signed contract
    texts = sorted(m["text"] for m in slack.messages)
    assert texts == ["Globex expansion entered Acquire", "Globex expansion: contract signed"]

    # the view: history, metrics, documents, rule runs, tasks from the updated rule
    assert view["stage"] == "keep" and view["failures"] == []
    assert [(t["from_stage"], t["to_stage"]) for t in view["history"]] == [
        (None, "prospect"), ("prospect", "engage"), ("engage", "acquire"), ("acquire", "keep")]
    metrics = {s["stage"]: s for s in view["stages"]}
    assert metrics["prospect"]["checklist_pct"] == 100.0 and metrics["acquire"]["documents_pct"] == 100.0
    assert metrics["keep"]["checklist_pct"] == 0.0 and metrics["keep"]["visits"] == 1
    assert all(metrics[s]["time_spent_seconds"] > 0 for s in ("prospect", "engage", "acquire"))
    runs = {(r["trigger"], r["rule"]): r for r in view["rule_runs"]}
    big = runs[("stage.entered", "big-deal-to-acquire")]
    assert big["fired"] and [a["ok"] for a in big["actions"]] == [True, True]
    assert not runs[("stage.entered", "small-deal-to-acquire")]["fired"]
    assert "condition false" in runs[("stage.entered", "small-deal-to-acquire")]["reason"]
    assert runs[("contract.signed", "signed")]["fired"]
    assert [t["title"] for t in view["opportunity"]["tasks"]] == ["Review Globex expansion"] * 3
    assert view["insight"]["next_actions"][0] == crm.events[-1]["data"]["ai_next_action"]
    as_of = datetime.fromisoformat(view["insight"]["provenance"]["inputs"]["as_of"])  # pinned by the workflow
    assert as_of >= datetime.fromisoformat(view["history"][-1]["at"])

    # the pipeline's aggregate metrics (from the projection)
    m = (await api.get("/v1/pipelines/peak/metrics", headers=h)).json()
    by_stage = {s["stage"]: s for s in m["stages"]}
    assert m["total"] == 1 and by_stage["keep"]["opportunities"] == 1
    assert by_stage["prospect"]["conversion"] == 1.0 and by_stage["acquire"]["conversion"] == 1.0
    assert by_stage["prospect"]["median_seconds_in_stage"] > 0 and by_stage["keep"]["median_seconds_in_stage"] is None


def simple_pipeline(version_note: str = "", with_acquire: bool = True) -> dict:
    """A small pipeline without folders (prospect -> engage -> acquire), roles unrestricted."""
    stages = [{"key": "prospect", "name": "Prospect", "color": "#6B7280", "probability": 0.1,
               "description": version_note},
              {"key": "engage", "name": "Engage", "color": "#2563EB", "probability": 0.3}]
    transitions = [{"from": "prospect", "to": "engage"}]
    if with_acquire:
        stages.append({"key": "acquire", "name": "Acquire", "color": "#F59E0B", "probability": 0.6})
        transitions.append({"from": "engage", "to": "acquire"})
    return {"apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "simple"},
            "spec": {"stages": stages, "transitions": transitions}}


async def test_concurrent_transitions_are_serialised(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, simple_pipeline())
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        assert (await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)).status_code == 200
        results = await asyncio.gather(*(
            api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "engage", "actor": AE}, headers=h)
            for _ in range(4)))
        assert sorted(r.status_code for r in results) == [200, 409, 409, 409]
        for refused in (r for r in results if r.status_code == 409):
            assert codes(refused) == [("same_stage", "to")]  # judged against the state the first one left
        view = await settle(api, admin_key, oid)
    assert [t["to_stage"] for t in view["history"]] == ["prospect", "engage"]


async def test_reads_fall_back_to_the_projection_when_no_worker_runs(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, simple_pipeline())
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
        await api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "engage", "actor": AE}, headers=h)
        live = await settle(api, admin_key, oid)
    assert live["source"] == "workflow"
    r = await api.get(f"/v1/opportunities/{oid}", headers=h)
    assert r.status_code == 200
    stored = r.json()
    assert stored["source"] == "projection"
    assert stored["stage"] == "engage" and stored["revision"] == live["revision"]
    assert stored["history"] == live["history"]
    assert (await api.get("/v1/opportunities/nope", headers=h)).status_code == 404
    described = await client.get_workflow_handle(workflow_id("acme", oid)).describe()
    assert described.raw_description.workflow_execution_info.priority.fairness_key == "org:acme"  # orgs in turn


async def test_put_validates_and_another_orgs_opportunity_is_404(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str
) -> None:
    from hub.auth import create_key

    h = bearer(admin_key)
    r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
    assert r.status_code == 409 and "no pipeline applies" in r.json()["detail"]
    await apply(hub, simple_pipeline())
    r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(stage="keep"), headers=h)
    assert r.status_code == 422 and "'keep' does not exist" in r.json()["detail"]
    r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(org="globex"), headers=h)
    assert r.status_code == 422
    async with hub.db.session() as s:
        viewer = await create_key(s, "acme", "viewer")
        other = await create_key(s, "globex", "admin")
    assert (await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=bearer(viewer))).status_code == 403
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(stage="engage"), headers=h)
        assert r.status_code == 200 and r.json()["stage"] == "engage"
        for call in (api.get(f"/v1/opportunities/{oid}", headers=bearer(other)),
                     api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "acquire", "actor": AE},
                              headers=bearer(other)),
                     api.post(f"/v1/opportunities/{oid}/checklist", json={"items": {"x": True}}, headers=bearer(other))):
            assert (await call).status_code == 404
        r = await api.post(f"/v1/opportunities/{oid}/checklist", json={"items": {"nope": True}}, headers=h)
        assert r.status_code == 422 and r.json()["unmet"][0]["field"] == "items.nope"


async def test_migrate_pipeline_one_and_bulk(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    h = bearer(admin_key)
    a, b, c = (f"{x}-{task_queue}" for x in "abc")
    await apply(hub, simple_pipeline())
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        for opp, stage in ((a, "prospect"), (b, "engage"), (c, "acquire")):
            r = await api.put(f"/v1/opportunities/{opp}", json=opportunity_body(stage=stage), headers=h)
            assert r.status_code == 200 and r.json()["pipeline"]["version"] == 1
        r = await api.post(f"/v1/opportunities/{a}:migrate-pipeline", headers=h)
        assert r.status_code == 200 and r.json()["status"] == "unchanged"
        await apply(hub, simple_pipeline("v2"))  # same stages: version 2
        r = await api.post(f"/v1/opportunities/{a}:migrate-pipeline", headers=h)
        assert r.json() == {"id": a, "status": "migrated", "version": 2, "unmet": [], "detail": None}
        await apply(hub, simple_pipeline("v3", with_acquire=False))  # version 3 drops "acquire"
        r = await api.post(f"/v1/opportunities/{c}:migrate-pipeline", headers=h)
        assert codes(r) == [("stage_missing", "stage")] and "'acquire'" in r.json()["unmet"][0]["message"]
        for opp in (a, b, c):
            await settle(api, admin_key, opp)
        r = await api.post("/v1/pipelines/simple/opportunities:migrate", headers=h)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["version"] == 3 and out["counts"] == {"migrated": 2, "refused": 1}
        assert {x["id"]: x["status"] for x in out["results"]} == {a: "migrated", b: "migrated", c: "refused"}
        moved = (await api.get(f"/v1/opportunities/{b}", headers=h)).json()
        assert moved["pipeline"]["version"] == 3 and moved["stage"] == "engage"
        # the pinned version decides: "c" still moves on v1's rules
        assert (await api.post(f"/v1/opportunities/{c}/transitions", json={"to": "engage", "actor": AE},
                               headers=h)).status_code == 409  # v1 has no acquire -> engage


def accepted_updates(history: WorkflowHistory) -> int:
    return sum(e.HasField("workflow_execution_update_accepted_event_attributes") for e in history.events)


async def test_registration_is_answered_by_the_workflow_it_starts(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str
) -> None:
    """A new opportunity's PUT is one Update-with-Start that the workflow it starts accepts, answering with its
    first state; the same body again is refused by the validator (no event); a changed body is an update."""
    h = bearer(admin_key)
    await apply(hub, simple_pipeline())
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        r = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "workflow" and r.json()["stage"] == "prospect" and r.json()["revision"] == 1
        handle = client.get_workflow_handle(workflow_id("acme", oid))
        assert accepted_updates(await handle.fetch_history()) == 1  # the registering PUT's own Update
        again = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
        assert again.status_code == 200 and again.json()["stage"] == "prospect"
        assert accepted_updates(await handle.fetch_history()) == 1
        changed = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(amount=5.0), headers=h)
        assert changed.status_code == 200 and changed.json()["opportunity"]["amount"] == 5.0
        assert accepted_updates(await handle.fetch_history()) == 2


async def test_updates_answer_without_the_pipeline_spec_and_the_views_have_it_back(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, oid: str
) -> None:
    """An Update's answer leaves the pinned pipeline's spec out of history (the API has the version); the API's
    view puts it back from its cache, the version's row, or — the row gone or changed — the workflow's state."""
    from sqlalchemy import update

    from activities.opportunity_types import ChecklistRequest, TransitionRequest
    from hub.store.resources import ResourceVersion
    from routes import opportunities as routes

    h = bearer(admin_key)
    await apply(hub, simple_pipeline())
    stage_names = [("prospect", "Prospect"), ("engage", "Engage"), ("acquire", "Acquire")]
    async with workers(hub, client, task_queue, AiStandIn(), providers=()):
        routes._SPECS.clear()
        put = await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
        assert [(s["stage"], s["name"]) for s in put.json()["stages"]] == stage_names  # (from the version's row)
        handle = client.get_workflow_handle_for(OpportunityWorkflow.run, workflow_id("acme", oid))
        answer = await handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={}, actor=AE))
        assert (answer.pipeline.name, answer.pipeline.spec) == ("simple", {})  # what history holds
        assert (await handle.query(OpportunityWorkflow.state)).pipeline.spec["spec"]["stages"][1]["name"] == "Engage"

        routes._SPECS.clear()  # a process without it, whose database holds other content under that version
        async with hub.db.session() as session:
            await session.execute(update(ResourceVersion).where(ResourceVersion.org_id == "acme",
                                                                ResourceVersion.name == "simple")
                                  .values(content_hash="restored-elsewhere"))  # fmt: skip
        moved = await api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "engage", "actor": AE}, headers=h)
        assert moved.status_code == 200, moved.text
        assert moved.json()["stage_name"] == "Engage"
        assert [(s["stage"], s["name"]) for s in moved.json()["stages"]] == stage_names  # (from the workflow)
        again = await handle.execute_update(OpportunityWorkflow.transition, TransitionRequest(to="acquire", actor=AE))
        assert again.pipeline.spec == {}
