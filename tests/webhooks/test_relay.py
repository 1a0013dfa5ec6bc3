"""The relay and WebhookEventWorkflow on the real Temporal dev server: what runs, what does not, failures,
and Graph's follow-ups (subscriptions renewed or recreated, changed drive items located on their opportunity)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker

from activities.connections import ConnectionActivities
from activities.connector_types import provider_task_queue
from activities.rule_runs import RuleActivities
from activities.rule_types import RulePlan, RulePlanInput
from activities.sync import SyncActivities, SyncFetcher
from activities.sync_schedules import remove_schedules
from activities.webhooks import WebhookActivities
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.secrets import put_secret
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from tests.conftest import bearer, shared_data
from tests.fakes.graph_server import APP, APP_ID, DRIVE_ID, GraphFake
from tests.sync.support import run_sync
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
from tests.workflows.opportunity_kit import (
    GRAPH_TOKEN,
    AiStandIn,
    apply,
    connect,
    graph_fake,
    main_activities,
    opportunity_body,
    peak,
    rule,
    settle,
)
from tests.workflows.test_opportunity_replay import HISTORIES, HISTORY_VAULT_KEYS
from webhooks.relay import Relay
from workflows.opportunity import OpportunityWorkflow
from workflows.sync import SyncWorkflow
from workflows.webhook_event import WebhookEventWorkflow, workflow_id

PUBLIC = "https://hub.example.com"
STATE = "graph-client-state-1"


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


@asynccontextmanager
async def graph_workers(
    hub: Hub, client: Client, task_queue: str, workflows: tuple[type, ...] = (), activities: list | None = None
) -> AsyncIterator[None]:
    """WebhookEventWorkflow (and ``workflows``) with every webhook activity and ``activities`` (default: the rule
    activities) on ``task_queue``; its sharepoint queue running ``connector.run_action`` and the sync fetches."""
    hooks, connections, rules = WebhookActivities(hub), ConnectionActivities(hub), RuleActivities(hub)
    try:
        async with (
            Worker(client, task_queue=task_queue, workflows=[WebhookEventWorkflow, *workflows],
                   activities=[*hooks.all(), *(activities or [rules.plan, rules.record_runs])],
                   workflow_runner=RUNNER),
            Worker(client, task_queue=provider_task_queue(task_queue, "sharepoint"),
                   activities=[connections.run_action, *SyncFetcher(connections).provider_queue()]),
        ):
            yield
    finally:
        await connections.aclose()


async def _graph_connection(hub: Hub, graph: GraphFake) -> str:
    """An active Microsoft connection on the fake: its app, drive, a token the fake accepts and a client state."""
    config = {"tenant_id": "t", "client_id": APP_ID, "base_url": graph.url + "/v1.0", "drive_id": DRIVE_ID}
    con = await connect(hub, "microsoft", "client_credentials", config, GRAPH_TOKEN)
    async with hub.db.session() as session:
        await put_secret(session, hub.vault, ORG, secret_owner(con), "client_state", STATE)
    return con


def _lifecycle(event: str, subscription_id: str) -> bytes:
    raw = shared_data("webhooks", "msgraph", "lifecycle_notification.template.json").read_text()
    doc = json.loads(raw.replace("subscriptionRemoved or missed or reauthorizationRequired", event))
    doc["value"][0].update(subscriptionId=subscription_id, subscriptionExpirationDateTime="2030-01-01T00:00:00Z")
    return json.dumps(doc).encode()


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _relay_until_finished(relay: Relay, hub: Hub, n: int) -> bool:
    await relay.run_once()
    return await _finished(hub, n)


async def _drop_schedules(hub: Hub, client: Client) -> None:
    """Sync schedules a test's follow-ups created on the shared server."""
    async with hub.db.session() as session:
        for conn in (await session.scalars(select(Connection))).all():
            await remove_schedules(client, conn)


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
    try:
        async with graph_workers(hub, client, task_queue):
            await relay.drain()
            await wait_until(lambda: _finished(hub, expected))
    finally:
        await _drop_schedules(hub, client)
    rows = await inbox_rows(hub)
    done = {(r.provider, r.event_type): r for r in rows if r.status == "done"}
    assert set(done) == {("gong", "call"), ("microsoft", "change.updated")}
    call = done[("gong", "call")]
    assert call.domain_types == ["call.recorded"]
    assert call.outcome["events"][0]["note"] == "opportunity workflow not found"
    drive = done[("microsoft", "change.updated")]  # OneDrive's notification names no item: the delta sync runs
    assert drive.outcome["events"][0]["follow_up"] == {"kind": "sync_documents", "sync": "scheduled"}
    ignored = {(r.provider, r.event_type): r for r in rows if r.status == "ignored"}
    assert len([r for r in rows if r.status == "ignored"]) == len(rows) - 2
    assert all(r.outcome["reason"] for r in ignored.values())
    assert ignored[("stripe", "invoice.paid")].outcome["reason"] == (
        "no opportunity and no rule listens to payment.received"
    )
    assert "has no domain event" in ignored[("stripe", "charge.refunded")].outcome["reason"]


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
                                      "note": "signalled", "rules_fired": [], "follow_up": None}]


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


async def test_a_new_lead_raises_lead_created_once_and_the_org_rules_see_the_lead(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    await apply(hub, rule("big-leads", "lead.created", [{"ai.next_action": {}}],
                          when="lead.employees >= 1000 && lead.score >= 0.0"),
                rule("small-leads", "lead.created", [{"ai.next_action": {}}], when="lead.employees < 1000"))
    lead = f"lead_{uuid.uuid4().hex[:8]}"  # workflow ids outlive a test on the shared Temporal server
    for employees in (5000, 10):  # the CRM sends the lead again: it is not new, and raises nothing
        r = await api.put(f"/v1/leads/{lead}", headers=bearer(admin_key),
                          json={"email": "cio@globex.example", "company": "Globex", "employees": employees})
        assert r.status_code == 200
    [row] = await inbox_rows(hub)
    assert (row.provider, row.connection_id, row.event_type) == ("generic", "hub", "lead.created")
    assert row.event_id == f"lead.created:{ORG}/{lead}"  # the org in it: another org's lead of that id is another
    async with webhook_worker(hub, client, task_queue):
        await Relay(hub, task_queue=task_queue).drain()
        await wait_until(lambda: _finished(hub, 1))
    [row] = await inbox_rows(hub)
    assert row.status == "done" and row.outcome["events"][0]["rules_fired"] == ["big-leads"]


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

    monkeypatch.setattr("hub.store.inbox.FAILURE_BACKOFF", timedelta(0))
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
    monkeypatch.setattr("hub.store.inbox.FAILURE_BACKOFF", timedelta(0))
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


async def test_reauthorization_required_renews_the_subscription(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    hub.settings.public_url = PUBLIC
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        con = await _graph_connection(hub, graph)
        sub = graph.add_subscription(hub.settings.webhook_url("microsoft", con), minutes=30)
        before = _at(sub["expirationDateTime"])
        body = _lifecycle("reauthorizationRequired", sub["id"])
        assert (await post_signed(api, hub, "microsoft", con, body, "application/json")).status_code == 202
        async with graph_workers(hub, client, task_queue):
            await Relay(hub, task_queue=task_queue).drain()
            await wait_until(lambda: _finished(hub, 1))
        [patch] = graph.calls("^/v1.0/subscriptions/", "PATCH")
    assert patch.path == f"/v1.0/subscriptions/{sub['id']}"
    assert patch.headers["authorization"] == f"Bearer {GRAPH_TOKEN}"
    assert _at(patch.json()["expirationDateTime"]) > before + timedelta(days=2)
    assert graph.calls("^/v1.0/subscriptions$", "POST") == []
    [row] = await inbox_rows(hub)
    assert row.status == "done" and row.domain_types == ["graph.lifecycle"]
    assert row.outcome["events"][0]["follow_up"] == {
        "kind": "renew_subscription", "id": sub["id"], "resource": f"drives/{DRIVE_ID}/root",
        "expiration": patch.json()["expirationDateTime"], "created": False}
    history = await client.get_workflow_handle(row.workflow_id).fetch_history()
    await Replayer(workflows=[WebhookEventWorkflow], data_converter=client.data_converter).replay_workflow(history)


async def test_a_subscription_graph_lost_or_removed_is_created_again_once(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str
) -> None:
    hub.settings.public_url = PUBLIC
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        con = await _graph_connection(hub, graph)
        hook = f"{PUBLIC}/webhooks/microsoft/{con}"
        relay = Relay(hub, task_queue=task_queue)
        async with graph_workers(hub, client, task_queue):
            await post_signed(api, hub, "microsoft", con, _lifecycle("reauthorizationRequired", "gone"),
                              "application/json")
            await relay.drain()
            await wait_until(lambda: _finished(hub, 1))
            [first] = graph.subscriptions.values()  # renewal answered 404: subscribed anew
            assert (first["notificationUrl"], first["clientState"]) == (hook, STATE)
            graph.subscriptions.clear()  # Graph drops it and says so
            await post_signed(api, hub, "microsoft", con, _lifecycle("subscriptionRemoved", first["id"]),
                              "application/json")
            await relay.drain()
            await wait_until(lambda: _finished(hub, 2))
            [second] = graph.subscriptions.values()
            await post_signed(api, hub, "microsoft", con, _lifecycle("subscriptionRemoved", "stale-copy"),
                              "application/json")  # a late duplicate: the live subscription is reused
            await relay.drain()
            await wait_until(lambda: _finished(hub, 3))
    assert list(graph.subscriptions) == [second["id"]] and second["id"] != first["id"]
    assert len(graph.calls("^/v1.0/subscriptions$", "POST")) == 2
    assert [r.path for r in graph.calls(method="PATCH")] == ["/v1.0/subscriptions/gone",
                                                             f"/v1.0/subscriptions/{second['id']}"]
    kinds = [(r.outcome["events"][0]["follow_up"]["kind"], r.outcome["events"][0]["follow_up"]["created"])
             for r in await inbox_rows(hub)]
    assert kinds == [("renew_subscription", True), ("create_subscription", True), ("create_subscription", False)]


async def test_a_drive_change_reaches_the_opportunity_whose_folder_holds_the_file(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    """Graph says only "the drive changed"; the delta sync finds the files; a user's file under
    Opportunities/{id}/ marks the required document it is; the hub's own copy and a file elsewhere mark nothing."""
    hub.settings.public_url = PUBLIC
    await apply(hub, peak())
    opp = f"opp-{task_queue}"  # unique on the shared Temporal server
    sync, connections = SyncActivities(hub), ConnectionActivities(hub)
    with graph_fake() as graph:
        con = await _graph_connection(hub, graph)
        async with hub.db.session() as session:
            conn = await session.get(Connection, con)
        try:
            async with graph_workers(hub, client, task_queue, workflows=(OpportunityWorkflow, SyncWorkflow),
                                     activities=[*main_activities(hub, AiStandIn()), *sync.main_queue(),
                                                 connections.mark_failed]):
                r = await api.put(f"/v1/opportunities/{opp}", json=opportunity_body(), headers=bearer(admin_key))
                assert r.status_code in (200, 201), r.text
                await settle(api, admin_key, opp)  # prospect folders and template provisioned by the hub
                await run_sync(client, hub, conn, "sharepoint.documents", workflow_id=f"backfill-{task_queue}")
                engage = f"Opportunities/{opp}/02 Engage"
                notes = graph.add_file(f"{engage}/Discovery/Globex - Discovery notes.docx")
                graph.add_file(f"{engage}/Mutual action plan/Globex - Mutual action plan.xlsx", by=APP)
                graph.add_file("Marketing/Globex brochure.pdf")
                note = json.loads(
                    shared_data("webhooks", "msgraph", "change_notification.driveItem.onedrive.json").read_bytes())
                r = await post_signed(api, hub, "microsoft", con, json.dumps(note).encode(), "application/json")
                assert r.status_code == 202
                relay = Relay(hub, task_queue=task_queue)
                await wait_until(lambda: _relay_until_finished(relay, hub, 4))
                view = await settle(api, admin_key, opp)
                state = await client.get_workflow_handle(f"opportunity/{ORG}/{opp}").query(OpportunityWorkflow.state)
        finally:
            await _drop_schedules(hub, client)
            await connections.aclose()
    engage_docs = next(s for s in view["stages"] if s["stage"] == "engage")["documents"]
    assert engage_docs == {"discovery_notes": True, "mutual_action_plan": False}
    rows = await inbox_rows(hub)
    assert all(r.status == "done" for r in rows)
    root, *items = rows
    assert root.outcome["events"][0]["follow_up"] == {"kind": "sync_documents", "sync": "scheduled"}
    by_path = {r.outcome["events"][0]["follow_up"]["path"]: r.outcome["events"][0] for r in items}
    mine = by_path[f"{engage}/Discovery/Globex - Discovery notes.docx"]
    assert (mine["type"], mine["opportunity_id"], mine["signalled"]) == ("document.changed", opp, True)
    assert mine["follow_up"]["document"] == "discovery_notes"
    hubs = by_path[f"{engage}/Mutual action plan/Globex - Mutual action plan.xlsx"]
    assert hubs["opportunity_id"] == opp and hubs["follow_up"]["document"] is None
    elsewhere = by_path["Marketing/Globex brochure.pdf"]
    assert (elsewhere["opportunity_id"], elsewhere["signalled"], elsewhere["note"]) == (None, False, "no opportunity")
    [event] = [e for e in state.events if e["data"].get("item_id") == notes["id"]]
    assert event["data"]["document"] == "discovery_notes" and event["source"]["provider"] == "microsoft"


async def test_kept_webhook_event_histories_replay() -> None:
    """Histories recorded by the workflow before follow-ups existed (their input already naming follow-ups, as a
    new relay would send them to an old worker) replay on today's code: it runs no follow-up for them."""
    files = sorted(HISTORIES.glob("webhook-event-*.json"))
    assert files, f"no kept WebhookEventWorkflow histories in {HISTORIES}"
    replayer = Replayer(workflows=[WebhookEventWorkflow],
                        data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))
    for path in files:
        doc = json.loads(Path(path).read_text())
        await replayer.replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))
