"""The Graph subscription upkeep of Microsoft connections on the real Temporal dev server and the Graph fake:
a Temporal Schedule per connection (made when the hub has a public URL) whose GraphSubscriptionWorkflow
creates the subscription once and renews it afterwards; deleting the connection removes the schedule."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleHandle, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, Worker

from activities import sync_schedules
from activities.connections import ConnectionActivities
from activities.connector_types import provider_task_queue
from activities.graph_types import GRAPH_SUBSCRIPTION_WORKFLOW, GraphSubscriptionInput, graph_subscription_id
from activities.sync import SyncActivities, SyncFetcher
from activities.sync_types import sync_schedule_id
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.secrets import put_secret
from tests.conftest import bearer
from tests.fakes.graph_server import APP_ID, DRIVE_ID, GraphFake
from tests.webhooks.conftest import ORG, RUNNER, wait_until
from tests.workflows.opportunity_kit import GRAPH_TOKEN, connect
from worker import build_workers
from workflows.graph_subscription import GraphSubscriptionResult, GraphSubscriptionWorkflow
from workflows.sync import SyncWorkflow

PUBLIC = "https://hub.example.com"
STATE = "graph-upkeep-client-state"


@asynccontextmanager
async def upkeep_workers(hub: Hub, client: Client, task_queue: str) -> AsyncIterator[None]:
    """The upkeep workflow (and the documents sync the connection's activation also starts) with their main
    queue activities; the sharepoint queue running ``connector.run_action`` and the sync fetches."""
    connections = ConnectionActivities(hub)
    try:
        async with (
            Worker(client, task_queue=task_queue, workflows=[GraphSubscriptionWorkflow, SyncWorkflow],
                   activities=[*connections.lifecycle(), *SyncActivities(hub).main_queue()], workflow_runner=RUNNER),
            Worker(client, task_queue=provider_task_queue(task_queue, "sharepoint"),
                   activities=[connections.run_action, *SyncFetcher(connections).provider_queue()]),
        ):
            yield
    finally:
        await connections.aclose()


async def _graph_connection(hub: Hub, graph: GraphFake, status: str = "active") -> Connection:
    """A Microsoft connection on the fake: its app, drive, a token the fake accepts and a client state."""
    config = {"tenant_id": "t", "client_id": APP_ID, "base_url": graph.url + "/v1.0", "drive_id": DRIVE_ID}
    con = await connect(hub, "microsoft", "client_credentials", config, GRAPH_TOKEN)
    async with hub.db.session() as session:
        await put_secret(session, hub.vault, ORG, secret_owner(con), "client_state", STATE)
        conn = await session.get(Connection, con)
        conn.status = status
        return conn


async def _runs(handle: ScheduleHandle, n: int) -> list[tuple[str, str]]:
    """(workflow id, run id) of the schedule's first ``n`` runs, once it has started that many."""
    runs: list[tuple[str, str]] = []

    async def started() -> bool:
        nonlocal runs
        actions = (await handle.describe()).info.recent_actions
        runs = [(a.action.workflow_id, a.action.first_execution_run_id) for a in actions]
        return len(runs) >= n

    await wait_until(started, timeout=30)
    return runs[:n]


async def _result(client: Client, run: tuple[str, str]) -> GraphSubscriptionResult:
    return await client.get_workflow_handle(run[0], run_id=run[1], result_type=GraphSubscriptionResult).result()


async def _history_text(client: Client, history: WorkflowHistory) -> str:
    """Every payload of the history, decrypted: what Temporal holds of the run in clear."""
    payloads: list[Payload] = []
    for event in history.events:
        for name in ("workflow_execution_started_event_attributes", "activity_task_scheduled_event_attributes"):
            if event.HasField(name):
                payloads += getattr(event, name).input.payloads
        for name in ("activity_task_completed_event_attributes", "workflow_execution_completed_event_attributes"):
            if event.HasField(name):
                payloads += getattr(event, name).result.payloads
    decoded = await client.data_converter.payload_codec.decode(payloads)
    return "\n".join(p.data.decode() for p in decoded)


async def _gone(client: Client, schedule_id: str) -> bool:
    try:
        await client.get_schedule_handle(schedule_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def test_an_active_connection_gets_one_subscription_kept_alive_and_loses_the_schedule_when_deleted(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    hub.settings.public_url = PUBLIC + "/"
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        conn = await _graph_connection(hub, graph)
        hook = f"{PUBLIC}/webhooks/microsoft/{conn.id}"
        schedule_id = graph_subscription_id(ORG, conn.id)
        async with upkeep_workers(hub, client, task_queue):
            await sync_schedules.connection_changed(hub, conn)  # what the connections API calls on activation
            handle = client.get_schedule_handle(schedule_id)
            desc = await handle.describe()
            assert [i.every for i in desc.schedule.spec.intervals] == [timedelta(hours=24)]
            action = desc.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.task_queue) == (GRAPH_SUBSCRIPTION_WORKFLOW, task_queue)

            [first_run] = await _runs(handle, 1)  # the connection is active: it ran at once
            first = await _result(client, first_run)
            assert first.status == "subscribed"
            [sub] = graph.subscriptions.values()
            assert sub["id"] == first.subscription_id and sub["resource"] == f"drives/{DRIVE_ID}/root"
            assert (sub["notificationUrl"], sub["lifecycleNotificationUrl"], sub["clientState"]) == (hook, hook, STATE)
            assert first.expiration == sub["expirationDateTime"]

            await sync_schedules.connection_changed(hub, conn)  # again (re-authorised): runs now, renews
            second = await _result(client, (await _runs(handle, 2))[1])
            assert (second.status, second.subscription_id) == ("renewed", sub["id"])
            assert list(graph.subscriptions) == [sub["id"]]
            assert len(graph.calls("^/v1.0/subscriptions$", "POST")) == 1
            [patch] = graph.calls("^/v1.0/subscriptions/", "PATCH")
            assert patch.path == f"/v1.0/subscriptions/{sub['id']}"

            history = await client.get_workflow_handle(first_run[0], run_id=first_run[1]).fetch_history()
            clear = await _history_text(client, history)
            assert hook in clear and sub["id"] in clear and STATE not in clear  # the clientState never travels
            # replayed under Temporal's default sandbox: the workflow module is re-imported, nothing of the hub's
            # passed through but what it imports as such, so a clock read or I/O in the workflow would fail here
            await Replayer(workflows=[GraphSubscriptionWorkflow],
                           data_converter=client.data_converter).replay_workflow(history)

            documents = client.get_schedule_handle(sync_schedule_id(ORG, conn.id, "sharepoint.documents"))
            [(sync_id, sync_run)] = await _runs(documents, 1)  # activation started the documents sync too
            await client.get_workflow_handle(sync_id, run_id=sync_run).result()  # let it finish before deleting
            r = await api.delete(f"/v1/connections/{conn.id}", headers=bearer(admin_key))
            assert r.status_code == 204, r.text
    assert await _gone(client, schedule_id)


async def test_without_a_public_url_no_schedule_is_made_and_the_log_says_why(
    hub: Hub, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert hub.settings.public_url is None
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        conn = await _graph_connection(hub, graph)
        with caplog.at_level(logging.WARNING, logger="activities.sync_schedules"):
            assert await sync_schedules.ensure_graph_upkeep(client, hub.settings, conn, run_now=True) is None
    assert await _gone(client, graph_subscription_id(ORG, conn.id))
    assert f"no Graph subscription upkeep for connection {conn.id}: HUB_PUBLIC_URL is not set" in caplog.text
    assert graph.calls() == []


async def test_only_providers_with_graph_subscriptions_get_the_upkeep(hub: Hub, client: Client) -> None:
    hub.settings.public_url = PUBLIC
    con = await connect(hub, "stripe", "api_key", {}, "sk_test_x")
    async with hub.db.session() as session:
        stripe = await session.get(Connection, con)
    assert sync_schedules.graph_notification_url(hub.settings, stripe) is None
    assert await sync_schedules.ensure_graph_upkeep(client, hub.settings, stripe) is None
    assert await _gone(client, graph_subscription_id(ORG, con))


async def test_a_pending_connection_has_the_schedule_but_its_runs_skip_until_it_is_active(
    hub: Hub, client: Client, task_queue: str
) -> None:
    hub.settings.public_url = PUBLIC
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        conn = await _graph_connection(hub, graph, status="pending_auth")
        try:
            assert await sync_schedules.ensure_graph_upkeep(client, hub.settings, conn, run_now=True) is True
            desc = await client.get_schedule_handle(graph_subscription_id(ORG, conn.id)).describe()
            assert desc.info.recent_actions == [] and desc.info.next_action_times  # no run now, one tomorrow
            assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)
            assert desc.schedule.action.priority.fairness_key == f"org:{ORG}"  # the org's turn on the shared queue
            async with upkeep_workers(hub, client, task_queue):
                result = await client.execute_workflow(
                    GraphSubscriptionWorkflow.run,
                    GraphSubscriptionInput(org_id=ORG, connection_id=conn.id,
                                           notification_url=f"{PUBLIC}/webhooks/microsoft/{conn.id}"),
                    id=f"graph-subscription-test/{conn.id}", task_queue=task_queue,
                    result_type=GraphSubscriptionResult,
                )  # fmt: skip
            assert result == GraphSubscriptionResult(status="skipped", reason=f"connection {conn.id} is pending_auth")
            assert graph.subscriptions == {} and graph.calls("subscriptions") == []
        finally:
            await sync_schedules.remove_graph_upkeep(client, conn)
    assert await _gone(client, graph_subscription_id(ORG, conn.id))


async def test_the_worker_runs_the_upkeep_workflow(hub: Hub, client: Client) -> None:
    main = build_workers(hub, client)[0]
    assert GraphSubscriptionWorkflow in main.config()["workflows"]
