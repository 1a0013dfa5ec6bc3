"""The OpenAI refinement of an opportunity's insight runs on the ``openai`` provider queue, draws from the
connection's request budget, and falls back to the local answer with its reason (real Temporal, OpenAI fake)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ai import AiActivities
from activities.connections import ConnectionActivities
from activities.opportunities import OpportunityActivities
from activities.opportunity_types import workflow_id
from activities.rule_runs import RuleActivities
from hub.runtime import Hub
from hub.store.ai import AiInsight
from hub.store.budgets import RateBudget
from hub.store.connections import Connection
from tests.ai.test_activities import good_answer, setup_openai
from tests.conftest import bearer
from tests.fakes.openai_server import OpenAIFake
from tests.workflows.opportunity_kit import apply, opportunity_body, peak, settle
from workflows.opportunity import OpportunityWorkflow


@asynccontextmanager
async def hub_workers(hub: Hub, client: Client, task_queue: str) -> AsyncIterator[None]:
    """The main queue (the workflow, its activities and the real AI activities) and the openai provider queue."""
    ai, rules, connections = AiActivities(hub), RuleActivities(hub), ConnectionActivities(hub)
    opp = OpportunityActivities(hub, insight=ai.next_action)
    main = Worker(client, task_queue=task_queue, workflows=[OpportunityWorkflow],
                  activities=[opp.prepare, opp.project, opp.send_crm_event, rules.plan, rules.record_runs,
                              rules.record_retry, *ai.all()])
    openai_queue = Worker(client, task_queue=f"{task_queue}-openai", activities=[connections.run_action])
    async with main, openai_queue:
        yield
    await connections.aclose()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def scheduled(client: Client, opp: str) -> list[tuple[str, str]]:
    """(activity type, task queue) of every activity the opportunity's workflow scheduled."""
    history = await client.get_workflow_handle(workflow_id("acme", opp)).fetch_history()
    return [(e.activity_task_scheduled_event_attributes.activity_type.name,
             e.activity_task_scheduled_event_attributes.task_queue.name)
            for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]


async def open_opportunity(api: httpx.AsyncClient, hub: Hub, key: str, opp: str) -> dict:
    """Register an opportunity through the API (PEAK pipeline) and wait for its effects (the insight among them)."""
    await apply(hub, peak())
    body = opportunity_body(meddpicc={"identify_pain": 2})
    answer = await api.put(f"/v1/opportunities/{opp}", json=body, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return await settle(api, key, opp, timeout=40)


async def connection_id(hub: Hub) -> str:
    async with hub.db.session() as session:
        return (await session.scalars(select(Connection.id).where(Connection.provider == "openai"))).one()


async def test_refinement_runs_on_the_openai_queue_and_draws_from_the_budget(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    before = time.time()
    prompt = sample("hub_ai_openai_tokens_total", org="acme", model="gpt-test", type="prompt")
    with OpenAIFake(answer=good_answer) as fake:
        await setup_openai(hub, fake.url)
        async with hub_workers(hub, client, task_queue):
            view = await open_opportunity(api, hub, admin_key, "refined-1")
        [sent] = fake.requests
    insight = view["insight"]
    assert insight["provenance"]["engine"] == "openai" and insight["provenance"]["fallback"] is None
    assert insight["next_actions"] and all(a["refined"] and a["title"].isupper() for a in insight["next_actions"])
    assert "refinement" not in insight
    assert sent.headers["authorization"] == "Bearer test-token" and sent.json()["model"] == "gpt-test"

    activities = await scheduled(client, "refined-1")
    assert ("connector.run_action", f"{task_queue}-openai") in activities  # the provider queue, not in-process
    assert [a for a in activities if a[0] == "connector.run_action"] == [("connector.run_action",
                                                                          f"{task_queue}-openai")]
    assert ("ai.refine_next_action", task_queue) in activities

    async with hub.db.session() as session:  # the request drew a slot from the connection's budget
        budget = await session.get(RateBudget, f"openai:{await connection_id(hub)}")
    assert budget is not None and budget.next_at > before
    used = insight["provenance"]["usage"]["prompt_tokens"]
    assert used > 0 and sample("hub_ai_openai_tokens_total", org="acme", model="gpt-test", type="prompt") == prompt + used
    async with hub.db.session() as session:  # stored once, refined
        rows = list(await session.scalars(select(AiInsight).where(AiInsight.subject_id == "refined-1")))
    assert [r.provenance["engine"] for r in rows] == ["openai"] and rows[0].provenance["output"]["actions"]


@pytest.mark.parametrize(("fault", "reason", "message"), [
    ("server_error", "provider_error", "ProviderUnavailable: openai answered 500"),
    ("rate_limit", "rate_limited", "ProviderRateLimited: openai answered 429"),
    ("invalid_answer", "invalid_answer", "invalid answer"),
    ("budget", "budget", "waited for the connection's budget"),
    ("no_connection", "no_connection", "no active openai connection"),
])
async def test_failures_fall_back_to_the_local_answer_with_the_reason(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str, fault: str, reason: str,
    message: str,
) -> None:
    fallbacks = sample("hub_ai_fallbacks_total", org="acme", kind="next_action", reason=reason)
    with OpenAIFake(answer=good_answer if fault != "invalid_answer" else {"actions": [{"code": "made.up"}]}) as fake:
        await setup_openai(hub, fake.url)
        conn = await connection_id(hub)
        if fault == "server_error":
            fake.fail(500, "server_error", "boom", times=2)
        elif fault == "rate_limit":
            fake.rate_limit(1, times=2)
        elif fault == "budget":  # the next slot is far ahead: the request would wait past the deadline
            async with hub.db.session() as session:
                session.add(RateBudget(key=f"openai:{conn}", next_at=time.time() + 600))
        elif fault == "no_connection":
            async with hub.db.session() as session:
                (await session.get(Connection, conn)).status = "disabled"  # type: ignore[union-attr]
        async with hub_workers(hub, client, task_queue):
            view = await open_opportunity(api, hub, admin_key, f"f-{fault}")
    provenance = view["insight"]["provenance"]
    assert provenance["fallback_reason"] == reason and message in provenance["fallback"]
    assert view["insight"]["next_actions"] and not any(a["refined"] for a in view["insight"]["next_actions"])
    assert sample("hub_ai_fallbacks_total", org="acme", kind="next_action", reason=reason) == fallbacks + 1
    on_queue = ("connector.run_action", f"{task_queue}-openai") in await scheduled(client, f"f-{fault}")
    assert on_queue == (fault != "no_connection")  # no connection: nothing to ask
