"""The AI activities: stored insights, OpenAI only with the flag and a connection, fallbacks recorded."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.ai import AiActivities
from activities.ai_types import Insight, OpportunityInsightInput, RefineInput, ScoreLeadInput
from hub.auth import ensure_org
from hub.runtime import Hub
from hub.store.ai import AiInsight
from hub.store.connections import Connection, secret_owner
from hub.store.secrets import put_secret
from tests.fakes.openai_server import OpenAIFake

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
OPP = {"name": "Initech", "amount": 25000.0, "close_date": "2026-06-15",
       "meddpicc": {"identify_pain": 2, "metrics": 1, "champion": 0, "economic_buyer": 1}}
EVENTS = [{"type": "payment.failed", "data": {}, "at": (NOW - timedelta(days=1)).isoformat()}]


def request(**extra) -> OpportunityInsightInput:
    return OpportunityInsightInput(org_id="acme", opportunity_id="opp-1", opp=OPP, stage="engage",
                                   checklist={"discovery_call_done": True}, events=EVENTS, as_of=NOW, **extra)


async def setup_openai(hub: Hub, url: str, flag: bool = True, status: str = "active") -> None:
    async with hub.db.session() as session:
        org = await ensure_org(session, "acme")
        org.flags = {"openai": flag}
        conn = Connection(org_id="acme", provider="openai", name="OpenAI", auth_mode="api_key", status=status,
                          config={"base_url": url + "/v1", "model": "gpt-test", "timeout_seconds": 1})
        session.add(conn)
        await session.flush()
        await put_secret(session, hub.vault, "acme", secret_owner(conn.id), "api_key", "test-token")


async def insights(hub: Hub) -> list[AiInsight]:
    async with hub.db.session() as session:
        return list((await session.scalars(select(AiInsight).order_by(AiInsight.id))).all())


def good_answer(body: dict) -> dict:
    candidates = json.loads(body["messages"][-1]["content"])["candidates"]
    return {"actions": [{"code": c["code"], "title": c["title"].upper(), "reasoning": "ok"}
                        for c in reversed(candidates)]}


async def test_next_action_is_local_and_stored_without_openai(hub: Hub) -> None:
    insight = await ActivityEnvironment().run(AiActivities(hub).next_action, request())
    assert insight.source == "prior" and insight.model_version == "deals-prior-1"
    assert insight.next_actions[0]["code"] == "event.payment_failed"
    assert insight.provenance["engine"] == "local"
    [row] = await insights(hub)
    assert (row.org_id, row.subject_type, row.subject_id, row.kind) == ("acme", "opportunity", "opp-1", "next_action")
    assert row.inputs["opp"] == OPP and row.inputs["as_of"] == NOW.isoformat().replace("+00:00", "Z")
    assert row.output["risk_score"] == insight.risk_score and row.provenance == insight.provenance


@pytest.mark.parametrize(("flag", "status"), [(False, "active"), (True, "pending_auth")])
async def test_openai_needs_the_flag_and_an_active_connection(hub: Hub, flag: bool, status: str) -> None:
    with OpenAIFake(answer=good_answer) as fake:
        await setup_openai(hub, fake.url, flag=flag, status=status)
        insight = await ActivityEnvironment().run(AiActivities(hub).next_action, request())
        assert fake.requests == []
    assert insight.provenance["engine"] == "local"
    assert insight.provenance.get("fallback_reason") == (None if not flag else "no_connection")


async def test_with_openai_the_insight_asks_for_a_refinement_and_is_stored_once_refined(hub: Hub) -> None:
    with OpenAIFake(answer=good_answer) as fake:
        await setup_openai(hub, fake.url)
        acts = AiActivities(hub)
        legacy = await ActivityEnvironment().run(acts.next_action, request())  # a run from before the queue
        pending = await ActivityEnvironment().run(acts.next_action, request(refine_on_queue=True))
        assert fake.requests == []  # the activity never calls OpenAI: the workflow does, on the openai queue
    assert legacy.refinement is None and legacy.provenance["fallback_reason"] == "legacy_workflow"
    assert pending.refinement is not None and pending.refinement.params["model"] == "gpt-test"
    assert pending.refinement.params["timeout_seconds"] == 1 and len(await insights(hub)) == 1  # the legacy one
    answer = {"output": good_answer(pending.refinement.params), "model": "gpt-test", "id": "x", "usage": {}}
    done = await ActivityEnvironment().run(acts.refine_next_action,
                                           RefineInput(request=request(), insight=pending, answer=answer))
    assert done.refinement is None and all(a["refined"] for a in done.next_actions)
    assert [a["code"] for a in done.next_actions] != [a["code"] for a in pending.next_actions]
    rows = await insights(hub)
    assert len(rows) == 2 and rows[-1].provenance["engine"] == "openai" and "refinement" not in rows[-1].output


async def test_deal_risk_and_score_lead(hub: Hub) -> None:
    acts = AiActivities(hub)
    risk = await ActivityEnvironment().run(acts.deal_risk, request())
    assert risk.next_actions == [] and risk.risk_score > 70 and risk.provenance["output"][-1] == "event.payment_failed"
    lead = await ActivityEnvironment().run(acts.score_lead, ScoreLeadInput(org_id="acme", lead_id="L9",
                                                                            lead={"source": "Referral"}))
    assert lead.source == "prior" and lead.lead_id == "L9" and lead.low <= lead.score <= lead.high
    kinds = [r.kind for r in await insights(hub)]
    assert kinds == ["deal_risk", "lead_score"]


@workflow.defn(sandboxed=False)
class CallsNextAction:
    """Calls ``ai.next_action`` by name, the way the OpportunityWorkflow does."""

    @workflow.run
    async def run(self, req: OpportunityInsightInput) -> Insight:
        return await workflow.execute_activity("ai.next_action", req, result_type=Insight,
                                               start_to_close_timeout=timedelta(seconds=30))


async def test_wire_compatible_with_the_opportunity_workflow(hub: Hub, client: Client, task_queue: str) -> None:
    async with hub.db.session() as session:
        await ensure_org(session, "acme")
    async with Worker(client, task_queue=task_queue, workflows=[CallsNextAction],
                      activities=AiActivities(hub).all()):
        result = await client.execute_workflow(
            CallsNextAction.run,
            OpportunityInsightInput(org_id="acme", opportunity_id="opp-2", opp=OPP, stage="engage", checklist={},
                           events=EVENTS),
            id=f"ai-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
        )
    assert Insight.model_validate(result.model_dump()).source == "prior"
    assert 0 < result.risk_score < 100 and result.next_actions[0]["code"] == "event.payment_failed"
