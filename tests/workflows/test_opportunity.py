"""OpportunityWorkflow durability: continue-as-new carries state; a killed worker repeats nothing; rule runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import Client

from activities.opportunity_types import (
    ChecklistRequest,
    OpportunityInput,
    PinnedPipeline,
    PrepareInput,
    TransitionRequest,
    body_hash,
    workflow_id,
)
from hub.runtime import Hub
from hub.store.opportunities import RuleRunRecord
from tests.conftest import bearer
from tests.fakes.crm_server import CrmFake
from tests.fakes.graph_server import GraphFake
from tests.fakes.slack_server import SlackFake
from tests.workflows.opportunity_kit import (
    SLACK_TOKEN,
    AiStandIn,
    apply,
    connect,
    connect_fakes,
    folder_requests,
    graph_fake,
    main_worker,
    opportunity_body,
    peak,
    provider_workers,
    rule,
    settle,
    stage_folder_requests,
    workers,
)
from workflows.opportunity import OpportunityWorkflow

AE = {"id": "u-ae", "role": "ae"}
CHECKLIST_PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "lists"},
    "spec": {"stages": [
        {"key": "prospect", "name": "Prospect", "color": "#6B7280", "probability": 0.1, "checklist": ["a", "b"]},
        {"key": "engage", "name": "Engage", "color": "#2563EB", "probability": 0.3}],
        "transitions": [{"from": "prospect", "to": "engage"}]},
}  # fmt: skip


@pytest.fixture
def graph() -> Iterator[GraphFake]:
    with graph_fake() as fake:
        yield fake


async def test_continue_as_new_carries_the_state(client: Client, hub: Hub, task_queue: str) -> None:
    """With a low history limit the workflow continues-as-new several times; nothing is lost."""
    opp = opportunity_body()
    wid = workflow_id("acme", f"can-{task_queue}")
    pinned = PinnedPipeline(name="lists", version=1, spec=CHECKLIST_PIPELINE)
    async with main_worker(hub, client, task_queue, AiStandIn()):
        handle = await client.start_workflow(
            OpportunityWorkflow.run,
            OpportunityInput(org_id="acme", opportunity_id=f"can-{task_queue}", opp=opp, body_hash=body_hash(opp),
                             pipeline=pinned, history_limit=40),
            id=wid, task_queue=task_queue,
        )  # fmt: skip
        first_run = handle.first_execution_run_id
        for i in range(12):
            await handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={"a": i % 2 == 0}))
        # a burst of concurrent Updates while runs roll over: none is lost
        await asyncio.gather(*(
            handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={"b": i % 2 == 0}))
            for i in range(20)))
        await handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={"a": True, "b": True}))
        state = await handle.execute_update(
            OpportunityWorkflow.transition, TransitionRequest.model_validate({"to": "engage", "actor": AE})
        )
        assert state.stage == "engage"
        deadline = asyncio.get_running_loop().time() + 15
        while (state := await handle.query(OpportunityWorkflow.state)).pending:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        described = await handle.describe()
    assert state.runs >= 3 and described.run_id != first_run
    assert described.history_length < 60  # the current run's history stayed small
    assert state.checklist == {"a": True, "b": True}
    assert [(t.seq, t.to_stage) for t in state.history] == [(1, "prospect"), (state.history[-1].seq, "engage")]
    assert state.seq > 13  # sequence numbers (and so idempotency keys) continue across runs
    assert state.insight is not None and [v.stage for v in state.visits] == ["prospect", "engage"]


async def test_worker_killed_mid_transition_completes_exactly_once(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, graph: GraphFake
) -> None:
    """The main worker stops while the transition's effects are under way (its AI insight, computed with the
    rule plan, hangs); a new worker finishes the transition: folders, templates, Slack post and CRM event
    each happen once."""
    h = bearer(admin_key)
    oid = f"kill-{task_queue}"
    await apply(hub, peak(), rule("engaged", "stage.entered", [
        {"slack.post_message": {"channel": "#deals", "text": "{{ opp.name }} engaged"}}], stage="engage"))
    await connect_fakes(hub, graph)
    with SlackFake(tokens=(SLACK_TOKEN,)) as slack, CrmFake() as crm:
        await connect(hub, "slack", "oauth2_code_pkce", {"base_url": slack.url + "/api"}, SLACK_TOKEN)
        crm.secret = (await api.post("/v1/orgs/acme/crm-signing-secret", headers=h)).json()["secret"]
        await api.patch("/v1/orgs/acme", json={"crm_callback_url": crm.callback_url}, headers=h)
        first, second = AiStandIn(), AiStandIn()
        async with provider_workers(hub, client, task_queue):
            worker = main_worker(hub, client, task_queue, first)
            run = asyncio.create_task(worker.run())
            body = opportunity_body(meddpicc={"identify_pain": 2})
            assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
            await settle(api, admin_key, oid)
            items = {"icp_fit_confirmed": True, "pain_hypothesis_written": True, "first_meeting_booked": True}
            await api.post(f"/v1/opportunities/{oid}/checklist", json={"items": items}, headers=h)
            first.release, first.entered = asyncio.Event(), asyncio.Event()  # the next AI call hangs
            r = await api.post(f"/v1/opportunities/{oid}/transitions", json={"to": "engage", "actor": AE}, headers=h)
            assert r.status_code == 200 and r.json()["stage"] == "engage"
            await asyncio.wait_for(first.entered.wait(), 10)
            assert slack.messages == [] and crm.deliveries == []  # the rules, folders and CRM event wait for it
            await worker.shutdown()  # the worker goes away mid-transition
            await run
            async with main_worker(hub, client, task_queue, second):
                view = await settle(api, admin_key, oid, timeout=40)
    assert view["stage"] == "engage" and view["failures"] == []
    assert len(second.calls) == 1 and second.calls[0].stage == "engage"
    stages = peak()["spec"]["stages"]
    assert folder_requests(graph) == stage_folder_requests(oid, stages[:2])  # no folder asked for twice
    assert [m["text"] for m in slack.messages] == ["Globex expansion engaged"]
    assert len(crm.deliveries) == 1 and crm.duplicates == 0
    assert [(e["type"], e["data"]["to_stage"]) for e in crm.events] == [("stage.changed", "engage")]
    assert crm.events[0]["data"]["ai_next_action"]["title"] == "advance Globex expansion beyond engage"


async def test_a_failing_action_is_recorded_and_the_rest_still_run(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, graph: GraphFake
) -> None:
    h = bearer(admin_key)
    oid = f"rules-{task_queue}"
    await apply(hub, CHECKLIST_PIPELINE, rule("noisy", "stage.entered", [
        {"slack.post_message": {"channel": "#nowhere", "text": "lost"}},
        {"opportunity.set_field": {"field": "forecast.category", "value": "pipeline"}},
        {"opportunity.add_task": {"title": "Call {{ opp.account.name }}"}}]))
    with SlackFake(tokens=(SLACK_TOKEN,)) as slack:
        await connect(hub, "slack", "oauth2_code_pkce", {"base_url": slack.url + "/api"}, SLACK_TOKEN)
        async with workers(hub, client, task_queue, AiStandIn()):
            await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)
            view = await settle(api, admin_key, oid)
    (run,) = view["rule_runs"]
    assert run["fired"] and run["key"] == f"opportunity/acme/{oid}/1/0.stage.entered/noisy"
    assert [(a["name"], a["ok"]) for a in run["actions"]] == [
        ("slack.post_message", False), ("opportunity.set_field", True), ("opportunity.add_task", True)]
    assert "channel_not_found" in run["actions"][0]["error"]
    assert [a["idempotency_key"] for a in run["actions"]] == [f"{run['key']}/{i}" for i in range(3)]
    assert view["opportunity"]["forecast"] == {"category": "pipeline"}
    assert view["opportunity"]["tasks"][0]["title"] == "Call Globex"
    async with hub.db.session() as s:
        rows = (await s.scalars(select(RuleRunRecord).where(RuleRunRecord.subject == workflow_id("acme", oid)))).all()
    assert [(r.rule, r.version, r.fired) for r in rows] == [("noisy", 1, True)]
    assert rows[0].actions[0]["ok"] is False


async def test_queued_transitions_share_one_preparation(client: Client, hub: Hub, task_queue: str) -> None:
    """Transitions accepted while the effects of the one before still run go together: one
    ``opportunity.prepare`` (rule plan and AI insight of the state they lead to), each transition's rule runs
    keyed by its own sequence number, as if it had gone alone."""
    pipeline = {
        "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "three"},
        "spec": {"stages": [{"key": k, "name": k, "color": "#6B7280", "probability": 0.1}
                            for k in ("prospect", "engage", "acquire")],
                 "transitions": [{"from": "prospect", "to": "engage"}, {"from": "engage", "to": "acquire"}]},
    }  # fmt: skip
    await apply(hub, rule("huge", "stage.entered", [{"opportunity.add_task": {"title": "t"}}], when="opp.amount > 1e12"))
    opp, oid = opportunity_body(), f"batch-{task_queue}"
    wid = workflow_id("acme", oid)
    ai = AiStandIn()
    ai.release = asyncio.Event()  # the registration's effects wait in its AI insight
    async with main_worker(hub, client, task_queue, ai):
        handle = await client.start_workflow(
            OpportunityWorkflow.run,
            OpportunityInput(org_id="acme", opportunity_id=oid, opp=opp, body_hash=body_hash(opp),
                             pipeline=PinnedPipeline(name="three", version=1, spec=pipeline)),
            id=wid, task_queue=task_queue,
        )  # fmt: skip
        await asyncio.wait_for(ai.entered.wait(), 10)
        for to in ("engage", "acquire"):
            state = await handle.execute_update(
                OpportunityWorkflow.transition, TransitionRequest.model_validate({"to": to, "actor": AE}))
            assert state.stage == to
        ai.release.set()
        deadline = asyncio.get_running_loop().time() + 20
        while (state := await handle.query(OpportunityWorkflow.state)).pending:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        history = await handle.fetch_history()
    prepared = [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
                and e.activity_task_scheduled_event_attributes.activity_type.name == "opportunity.prepare"]
    assert len(prepared) == 2  # the registration's, then one for both transitions
    [sent] = await client.data_converter.decode(
        prepared[-1].activity_task_scheduled_event_attributes.input.payloads, [PrepareInput])
    assert sent.opp is not None and sent.opp["stage"] == "acquire"  # the opportunity goes into history once ...
    assert sent.insight is not None and sent.insight.opp == {} and all("opp" not in e for e in sent.events)
    assert ai.calls[-1].opp == sent.opp  # ... and the activity puts it back where the plan and the insight read it
    assert [c.stage for c in ai.calls] == ["prospect", "acquire"]  # no built-in action ran: no second insight
    assert state.insight is not None and state.insight["next_actions"][0]["title"].endswith("beyond acquire")
    assert [r.key for r in state.rule_runs] == [f"{wid}/{seq}/{event}.stage.entered/huge"
                                                for seq, event in ((1, 0), (2, 1), (3, 1))]
    assert all(not r.fired for r in state.rule_runs)
    assert [(t.seq, t.to_stage) for t in state.history] == [(1, "prospect"), (2, "engage"), (3, "acquire")]
