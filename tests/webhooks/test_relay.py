"""The relay and WebhookEventWorkflow on the real Temporal dev server: what runs, what does not, failures."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.rule_types import RulePlan, RulePlanInput
from activities.webhooks import WebhookActivities
from hub.runtime import Hub
from tests.conftest import shared_data
from tests.webhooks.conftest import (
    ORG,
    RUNNER,
    inbox_rows,
    make_connection,
    post_signed,
    wait_until,
    webhook_worker,
)
from tests.webhooks.fixtures import content_type, payload_files
from tests.webhooks.standins import OpportunityStandIn
from tests.workflows.opportunity_kit import apply, rule
from webhooks.relay import Relay
from workflows.webhook_event import WebhookEventWorkflow, workflow_id


def _invoice(opportunity_id: str | None = None, event_id: str = "evt_paid_1", kind: str = "invoice.paid") -> bytes:
    doc = json.loads(shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes())
    doc["id"], doc["type"] = event_id, kind
    if opportunity_id:
        doc["data"]["object"]["metadata"] = {"opportunity_id": opportunity_id}
    return json.dumps(doc).encode()


async def _finished(hub: Hub, n: int) -> bool:
    rows = await inbox_rows(hub)
    return len(rows) == n and all(r.status in ("done", "ignored", "dead") for r in rows)


async def _start_opportunity(client: Client, task_queue: str, opp: str) -> None:
    await client.start_workflow(OpportunityStandIn.run, id=f"opportunity/{ORG}/{opp}", task_queue=task_queue)


async def _received(client: Client, opp: str) -> list[dict]:
    return await client.get_workflow_handle(f"opportunity/{ORG}/{opp}").query(OpportunityStandIn.received)


async def test_every_shared_payload_is_accepted_then_mapped_or_ignored(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    expected = 0
    for scheme, provider, path in payload_files():
        con = await make_connection(hub, provider)  # a connection each: the fixtures share event ids
        body = path.read_bytes()
        r = await post_signed(api, hub, provider, con, body, content_type(path))
        assert r.status_code in (200, 202), (path, r.text)
        expected += 0 if path.name == "url_verification.json" else len(json.loads(body).get("value", [1])) if (
            scheme == "microsoft") else 1
    rows = await inbox_rows(hub)
    assert len(rows) == expected
    relay = Relay(hub, task_queue=task_queue)
    async with webhook_worker(hub, client, task_queue):
        await relay.drain()
        await wait_until(lambda: _finished(hub, expected))
    by_type = {(r.provider, r.event_type): r for r in await inbox_rows(hub)}
    call = by_type[("gong", "call")]
    assert call.status == "done" and call.domain_types == ["call.recorded"]
    assert call.outcome["events"][0]["note"] == "opportunity workflow not found"
    ignored = [r for r in by_type.values() if r.status == "ignored"]
    assert len(ignored) == len(by_type) - 1 and all(r.outcome["reason"] for r in ignored)
    assert by_type[("stripe", "invoice.paid")].outcome["reason"] == (
        "no opportunity and no rule listens to payment.received"
    )
    assert "has no domain event" in by_type[("stripe", "charge.refunded")].outcome["reason"]


async def test_domain_event_is_signalled_to_the_opportunity_workflow(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    con, opp = await make_connection(hub, "stripe"), f"opp-{task_queue}"  # unique on the shared server
    async with webhook_worker(hub, client, task_queue, extra_workflows=(OpportunityStandIn,)):
        await _start_opportunity(client, task_queue, opp)
        assert (await post_signed(api, hub, "stripe", con, _invoice(opp), "application/json")).status_code == 200
        await Relay(hub, task_queue=task_queue).drain()
        await wait_until(lambda: _finished(hub, 1))
        [event] = await _received(client, opp)
    assert event["type"] == "payment.received"
    assert event["source"] == {"provider": "stripe", "event_id": "evt_paid_1"}
    assert event["data"]["opportunity_id"] == opp and event["data"]["amount_paid"] == 2000
    [row] = await inbox_rows(hub)
    assert row.status == "done" and row.workflow_id == workflow_id("stripe", con, "evt_paid_1")
    assert row.outcome["events"] == [{"type": "payment.received", "opportunity_id": opp, "signalled": True,
                                      "note": "signalled", "rules_fired": []}]


async def test_slack_approval_button_reaches_the_real_opportunity_workflow(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    from tests.conftest import bearer
    from tests.workflows.opportunity_kit import AiStandIn, opportunity_body, peak, workers

    await apply(hub, peak())
    con = await make_connection(hub, "slack")
    doc = json.loads(shared_data("webhooks", "slack", "block_actions.json").read_bytes())
    doc["actions"][0]["action_id"] = "approve"
    opp = f"opp-{task_queue}"  # unique on the shared Temporal server
    doc["actions"][0]["value"] = json.dumps({"opportunity_id": opp, "request": "discount"})
    async with workers(hub, client, task_queue, AiStandIn()), webhook_worker(hub, client, f"{task_queue}-hooks"):
        r = await api.put(f"/v1/opportunities/{opp}", json=opportunity_body(), headers=bearer(admin_key))
        assert r.status_code in (200, 201), r.text
        form = urlencode({"payload": json.dumps(doc)}).encode()
        assert (await post_signed(api, hub, "slack", con, form, "application/x-www-form-urlencoded")).status_code == 200
        await Relay(hub, task_queue=f"{task_queue}-hooks").drain()
        await wait_until(lambda: _finished(hub, 1))
        state = (await api.get(f"/v1/opportunities/{opp}", headers=bearer(admin_key))).json()
    assert state["approvals"]["discount"]["decision"] == "approved"


async def test_event_nothing_listens_to_finishes_without_a_workflow(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    con = await make_connection(hub, "stripe")
    await post_signed(api, hub, "stripe", con, _invoice(event_id="evt_charge", kind="charge.succeeded"),
                      "application/json")
    await post_signed(api, hub, "stripe", con, _invoice(event_id="evt_unbound"), "application/json")
    await Relay(hub, task_queue=task_queue).drain()  # no worker needed: nothing is started
    rows = {r.event_id: r for r in await inbox_rows(hub)}
    assert rows["evt_charge"].status == rows["evt_unbound"].status == "ignored"
    assert rows["evt_unbound"].domain_types == ["payment.received"]
    for row in rows.values():
        with pytest.raises(RPCError):
            await client.get_workflow_handle(workflow_id("stripe", con, row.event_id)).describe()


async def test_org_rules_run_for_an_event_without_opportunity(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    await apply(hub, rule("on-payment", "payment.received", [{"ai.next_action": {}}]))
    con = await make_connection(hub, "stripe")
    await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    async with webhook_worker(hub, client, task_queue):
        await Relay(hub, task_queue=task_queue).drain()
        await wait_until(lambda: _finished(hub, 1))
    [row] = await inbox_rows(hub)
    assert row.status == "done"
    assert row.outcome["events"][0]["rules_fired"] == ["on-payment"]


class FailingPlan:
    """Stands in for ``rules.plan`` and fails without retry, as a broken rule store would."""

    @activity.defn(name="rules.plan")
    async def plan(self, input: RulePlanInput) -> RulePlan:
        raise ApplicationError("rule store unreadable", non_retryable=True)


async def test_failed_attempts_dead_letter_with_the_reason_and_replay_succeeds(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import bearer

    monkeypatch.setattr("activities.webhooks.RETRY_BACKOFF", timedelta(0))
    hub.settings.webhook_max_attempts = 3
    await apply(hub, rule("on-payment", "payment.received", [{"ai.next_action": {}}]))
    con = await make_connection(hub, "stripe")
    await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    hooks = WebhookActivities(hub)
    relay = Relay(hub, task_queue=task_queue)
    async with Worker(client, task_queue=task_queue, workflows=[WebhookEventWorkflow],
                      activities=[hooks.complete_event, hooks.fail_event, FailingPlan().plan], workflow_runner=RUNNER):
        for _ in range(200):
            await relay.run_once()
            [row] = await inbox_rows(hub)
            if row.status == "dead":
                break
            await asyncio.sleep(0.05)
    assert row.status == "dead" and row.attempts == 3 and row.generation == 3
    assert "rule store unreadable" in row.last_error and len(row.errors) == 3
    r = await api.post(f"/v1/webhook-events/{row.id}:replay", headers=bearer(admin_key))
    assert r.status_code == 202 and r.json()["status"] == "pending"
    async with webhook_worker(hub, client, task_queue):
        await relay.drain()
        await wait_until(lambda: _finished(hub, 1))
    [row] = await inbox_rows(hub)
    assert row.status == "done" and row.workflow_id.endswith("#4")


async def test_workflow_that_dies_is_noticed_and_relayed_again(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webhooks.relay.FAILURE_BACKOFF", timedelta(0))
    await apply(hub, rule("on-payment", "payment.received", [{"ai.next_action": {}}]))
    con = await make_connection(hub, "stripe")
    await post_signed(api, hub, "stripe", con, _invoice(), "application/json")
    relay = Relay(hub, task_queue=task_queue, check_after=timedelta(0))
    await relay.run_once()  # started, but no worker runs it yet
    [row] = await inbox_rows(hub)
    assert row.status == "relayed"
    await client.get_workflow_handle(row.workflow_id).terminate("operator")
    await relay.housekeeping()
    [row] = await inbox_rows(hub)
    assert row.status == "pending" and row.generation == 1 and "TERMINATED" in row.last_error
    async with webhook_worker(hub, client, task_queue):
        await relay.drain()
        await wait_until(lambda: _finished(hub, 1))
    [row] = await inbox_rows(hub)
    assert row.status == "done" and row.workflow_id.endswith("#1")


async def test_relay_runs_with_the_app_and_can_be_switched_off(hub: Hub, client: Client, task_queue: str) -> None:
    from api import create_app

    con = await make_connection(hub, "stripe")
    for enabled in (False, True):
        hub.settings.webhook_relay = enabled
        app = create_app(hub)
        event_id = f"evt_{uuid.uuid4().hex[:8]}"
        async with app.router.lifespan_context(app), webhook_worker(hub, client, task_queue), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hub.test"
        ) as http:
            await _start_opportunity(client, task_queue, event_id)
            r = await post_signed(http, hub, "stripe", con, _invoice(event_id, event_id=event_id), "application/json")
            assert r.status_code == 200
            if enabled:
                await wait_until(lambda eid=event_id: _status(hub, eid, "done"), timeout=30)
            else:
                await asyncio.sleep(1.5)
                assert await _status(hub, event_id, "pending")


async def _status(hub: Hub, event_id: str, status: str) -> bool:
    rows = await inbox_rows(hub, event_id=event_id)
    return bool(rows) and rows[0].status == status
