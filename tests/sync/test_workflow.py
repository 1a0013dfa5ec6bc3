"""SyncWorkflow against a stand-in pager under the real activity name, with the real store and Temporal."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities import sync as sync_activities
from activities.connections import ConnectionActivities
from activities.connector_types import provider_task_queue
from activities.sync import SyncActivities, SyncFetcher, stage
from activities.sync_types import (
    ERR_SYNC_CONFLICT,
    SYNC_FETCH_SEGMENT,
    BeginInput,
    FetchInput,
    PageData,
    RecordData,
    SegmentInput,
    StoreInput,
    SyncTarget,
)
from hub.runtime import Hub
from hub.store.connections import Connection
from hub.store.orgs import AuditEntry
from tests.sync.support import (
    PagerStandIn,
    record_count,
    run_sync,
    seed_connection,
    staged_pages,
    state_of,
    stored,
    sync_workers,
)
from tests.workflows.test_opportunity_replay import _histories
from workflows.sync import SyncWorkflow

MODEL = "stripe.customers"  # a declared model without change events: the pager decides what it holds


def customers(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"cus_{i:04d}", "object": "customer", "name": f"Customer {i}"} for i in range(start, start + n)]


def wid() -> str:
    return f"sync-test-{uuid.uuid4().hex[:10]}"


async def test_pages_through_several_pages_with_continue_as_new_then_runs_incrementally(
    client: Client, hub: Hub
) -> None:
    conn = await seed_connection(hub, "stripe")
    pager = PagerStandIn(customers(23))
    workflow_id = wid()
    async with sync_workers(client, hub, "stripe", pager.fetch):
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=workflow_id, page_size=5, pages_per_execution=2)
        assert (summary.pages, summary.records, summary.changed, summary.status) == (5, 23, 23, "completed")
        # every page fetched exactly once, in order, across three executions (continue-as-new every 2 pages),
        # each execution one sync.fetch_segment for its pages
        assert pager.calls == [None, "5", "10", "15", "20"]
        assert await _activities(client, workflow_id) == [["sync.begin", SYNC_FETCH_SEGMENT], [SYNC_FETCH_SEGMENT],
                                                          [SYNC_FETCH_SEGMENT, "sync.finish"]]
        assert len(await stored(hub, conn, MODEL)) == 23
        state = await state_of(hub, conn, MODEL)
        assert (state.state, state.cursor, state.run_pages, state.records_seen) == ("idle", "23", 5, 23)
        assert state.last_success_at is not None and state.consecutive_failures == 0

        pager.records += customers(3, start=23)
        pager.records[0] = {**pager.records[0], "name": "renamed"}  # before the cursor: not re-read
        pager.calls.clear()
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=wid(), page_size=5)
        assert pager.calls == ["23"]
        assert (summary.pages, summary.records, summary.changed) == (1, 3, 3)
        state = await state_of(hub, conn, MODEL)
        assert (state.cursor, state.records_seen, state.run_records) == ("26", 26, 3)
        assert await record_count(hub, conn) == 26


async def test_worker_stopped_after_page_2_is_stored_resumes_at_page_3_without_duplicates(
    client: Client, hub: Hub
) -> None:
    conn = await seed_connection(hub, "stripe")
    data = customers(20)
    pager = PagerStandIn(data, hold="10")  # page 3 starts at offset 10; it hangs until the worker dies
    workflow_id = wid()
    async with sync_workers(client, hub, "stripe", pager.fetch):
        handle = await client.start_workflow(
            SyncWorkflow.run, _input(conn, page_size=5), id=workflow_id, task_queue=hub.settings.task_queue)
        await asyncio.wait_for(pager.holding.wait(), 30)
        for _ in range(200):  # page 2 is stored (its store runs while page 3 is being fetched)
            if (await state_of(hub, conn, MODEL)).run_pages == 2:
                break
            await asyncio.sleep(0.05)
    # both workers are gone; the run stands at its stored cursor
    state = await state_of(hub, conn, MODEL)
    assert (state.state, state.run_pages, state.cursor, state.run_records) == ("running", 2, "10", 10)
    assert await record_count(hub, conn) == 10

    restarted = PagerStandIn(data)
    async with sync_workers(client, hub, "stripe", restarted.fetch):
        summary = await handle.result()
    assert restarted.calls == ["10", "15"]  # resumed at page 3; pages 1–2 were not fetched again
    assert (summary.pages, summary.records, summary.changed) == (4, 20, 20)
    state = await state_of(hub, conn, MODEL)
    assert (state.state, state.cursor, state.records_seen, state.records_changed) == ("idle", "20", 20, 20)
    assert sorted(await stored(hub, conn, MODEL)) == [c["id"] for c in data]
    assert await staged_pages(hub, conn) == 0


async def test_a_run_that_fails_for_good_leaves_the_cursor_for_the_next_run(client: Client, hub: Hub) -> None:
    conn = await seed_connection(hub, "stripe")
    data = customers(12)
    pager = PagerStandIn(data)
    async with sync_workers(client, hub, "stripe", pager.fetch):
        await run_sync(client, hub, conn, MODEL, workflow_id=wid(), page_size=5)
        pager.records += customers(4, start=12)
        pager.fail = "No such API key"
        with pytest.raises(WorkflowFailureError):
            await run_sync(client, hub, conn, MODEL, workflow_id=wid(), page_size=5)
        state = await state_of(hub, conn, MODEL)
        assert (state.state, state.cursor, state.consecutive_failures) == ("failing", "12", 1)
        assert "No such API key" in state.last_error
        assert await staged_pages(hub, conn) == 0
        pager.fail = None
        pager.calls.clear()
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=wid(), page_size=5)
    assert pager.calls == ["12"] and summary.records == 4
    state = await state_of(hub, conn, MODEL)
    assert (state.state, state.consecutive_failures, state.records_seen) == ("idle", 0, 16)


async def test_a_sync_failing_three_runs_in_a_row_marks_the_connection_failed_once(client: Client, hub: Hub) -> None:
    conn = await seed_connection(hub, "stripe")
    pager = PagerStandIn(customers(3), fail="Invalid API Key provided: sk_test_****fake")
    async with sync_workers(client, hub, "stripe", pager.fetch):
        for _ in range(3):
            with pytest.raises(WorkflowFailureError):
                await run_sync(client, hub, conn, MODEL, workflow_id=wid())
        later = await run_sync(client, hub, conn, MODEL, workflow_id=wid())  # waits for re-authorisation
    assert (later.status, later.reason) == ("skipped", f"connection {conn.id} is needs_reauth")
    async with hub.db.session() as session:
        current = await session.get(Connection, conn.id)
        failed = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "connection.failed"))).all()
    assert current.status == "needs_reauth"
    assert "failed 3 times in a row" in current.last_error and "Invalid API Key" in current.last_error
    assert len(failed) == 1 and failed[0].target == f"connection/{conn.id}"
    state = await state_of(hub, conn, MODEL)
    assert (state.state, state.consecutive_failures) == ("failing", 3)
    assert len(pager.calls) == 3


async def _run_begun(hub: Hub) -> tuple[Connection, SyncActivities, SyncTarget, FetchInput]:
    """Run ``r1`` of a new Stripe connection's sync begun: the connection, activities, target, first page's fetch."""
    conn = await seed_connection(hub, "stripe")
    acts = SyncActivities(hub)
    target = SyncTarget(org_id=conn.org_id, connection_id=conn.id, model=MODEL)
    await acts.begin(BeginInput(target=target, run_id="r1"))
    return conn, acts, target, FetchInput(target=target, run_id="r1", cursor=None, page_size=3)


async def test_storing_a_page_twice_counts_once_and_a_page_off_the_cursor_is_refused(hub: Hub) -> None:
    conn, acts, target, fetched = await _run_begun(hub)
    page = await stage(hub, fetched, None, PageData(records=[RecordData(id=c["id"], payload=c) for c in customers(3)],
                                                    next_cursor="3", done=False))
    first = await acts.store_page(StoreInput(target=target, run_id="r1", page_no=1, cursor=None, page=page))
    again = await acts.store_page(StoreInput(target=target, run_id="r1", page_no=1, cursor=None, page=page))
    assert (first.new, first.replayed, again.new, again.replayed) == (3, False, 0, True)
    state = await state_of(hub, conn, MODEL)
    assert (state.cursor, state.run_pages, state.records_seen) == ("3", 1, 3)
    with pytest.raises(ApplicationError, match="does not follow the stored cursor"):
        await acts.store_page(StoreInput(target=target, run_id="r1", page_no=2, cursor="999", page=page))
    with pytest.raises(ApplicationError, match="is gone"):  # a staged page is stored once
        await acts.store_page(StoreInput(target=target, run_id="r1", page_no=2, cursor="3", page=page))
    assert (await state_of(hub, conn, MODEL)).cursor == "3"


async def test_pages_stored_together_must_each_continue_where_the_one_before_ends(hub: Hub) -> None:
    conn, acts, target, fetched = await _run_begun(hub)
    first = await stage(hub, fetched, None, PageData(records=[RecordData(id=c["id"], payload=c) for c in customers(3)],
                                                     next_cursor="3", done=False))
    elsewhere = await stage(hub, fetched, "7", PageData(records=[RecordData(id="cus_0007", payload={})],
                                                        next_cursor="8", done=False))
    with pytest.raises(ApplicationError, match="was not fetched from the stored cursor"):
        await acts.store_page(StoreInput(target=target, run_id="r1", page_no=1, cursor=None, page=first,
                                         more=[elsewhere]))
    state = await state_of(hub, conn, MODEL)  # nothing of the batch was stored
    assert (state.cursor, state.run_pages) == (None, 0)
    assert await record_count(hub, conn) == 0 and await staged_pages(hub, conn) == 2


async def test_two_worker_processes_on_the_provider_queue_request_each_page_once_in_order(
    client: Client, hub: Hub
) -> None:
    conn = await seed_connection(hub, "stripe")
    pager = PagerStandIn(customers(20))
    other = SyncFetcher(ConnectionActivities(hub), pager.fetch)  # a second worker process
    other_client = await Client.connect(client.service_client.config.target_host, namespace=client.namespace,
                                        data_converter=client.data_converter)
    async with (
        sync_workers(client, hub, "stripe", pager.fetch),
        Worker(other_client, task_queue=provider_task_queue(hub.settings.task_queue, "stripe"),
               activities=other.provider_queue()),
    ):
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=wid(), page_size=2, pages_per_execution=4)
    assert pager.calls == [str(n) if n else None for n in range(0, 20, 2)]
    assert (summary.pages, summary.records, summary.changed) == (10, 20, 20)
    assert sorted(await stored(hub, conn, MODEL)) == [c["id"] for c in customers(20)]
    assert await staged_pages(hub, conn) == 0


async def test_a_segment_retried_after_a_429_resumes_from_the_stored_cursor(client: Client, hub: Hub) -> None:
    conn = await seed_connection(hub, "stripe")
    pager = PagerStandIn(customers(20), fail_once="10")  # page 3's first request: 429
    workflow_id = wid()
    async with sync_workers(client, hub, "stripe", pager.fetch):
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=workflow_id, page_size=5)
    assert pager.calls == [None, "5", "10", "10", "15"]  # pages 1-2, stored, were not requested again
    assert (summary.pages, summary.records, summary.changed) == (4, 20, 20)
    assert sorted(await stored(hub, conn, MODEL)) == [c["id"] for c in customers(20)]
    assert await _activities(client, workflow_id) == [["sync.begin", SYNC_FETCH_SEGMENT, "sync.finish"]]
    assert (await state_of(hub, conn, MODEL)).cursor == "20"


async def test_a_segment_heartbeats_the_stored_cursor_and_goes_on_from_it(hub: Hub) -> None:
    conn, _, target, _ = await _run_begun(hub)
    pager = PagerStandIn(customers(8))
    fetcher = SyncFetcher(ConnectionActivities(hub), pager.fetch)
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    first = await env.run(fetcher.fetch_segment, SegmentInput(target=target, run_id="r1", last_page=2, page_size=3))
    assert (first.cursor, first.pages, first.records, first.done) == ("6", 2, 6, False)
    assert [(d[0]["cursor"], d[0]["pages"]) for d in beats] == [("3", 1), ("6", 2)]
    assert (await state_of(hub, conn, MODEL)).cursor == "6"  # stored page by page

    rest = await env.run(fetcher.fetch_segment, SegmentInput(target=target, run_id="r1", last_page=9, page_size=3))
    assert (rest.cursor, rest.pages, rest.records, rest.changed, rest.done) == ("8", 3, 8, 8, True)
    assert pager.calls == [None, "3", "6"] and await record_count(hub, conn) == 8
    env.info = dataclasses.replace(env.info, heartbeat_details=[rest.model_dump()])  # retried after the last page
    again = await env.run(fetcher.fetch_segment, SegmentInput(target=target, run_id="r1", last_page=9, page_size=3))
    assert again == rest and pager.calls == [None, "3", "6"]  # ended, as its last heartbeat says
    with pytest.raises(ApplicationError) as refused:  # another run took the sync over
        await env.run(fetcher.fetch_segment, SegmentInput(target=target, run_id="r0", last_page=9, page_size=3))
    assert refused.value.type == ERR_SYNC_CONFLICT and pager.calls == [None, "3", "6"]


async def test_a_segment_waiting_for_its_next_page_keeps_heartbeating_the_stored_cursor(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, target, _ = await _run_begun(hub)
    monkeypatch.setattr(sync_activities, "SEGMENT_HEARTBEAT", timedelta(seconds=0.2))  # a beat every 0.05 s
    pager = PagerStandIn(customers(8), hold="3")  # page 2 hangs at the provider (or behind the budget)
    fetcher = SyncFetcher(ConnectionActivities(hub), pager.fetch)
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    segment = asyncio.create_task(
        env.run(fetcher.fetch_segment, SegmentInput(target=target, run_id="r1", last_page=9, page_size=3)))
    await asyncio.wait_for(pager.holding.wait(), 10)
    await asyncio.sleep(0.5)
    segment.cancel()
    with pytest.raises(asyncio.CancelledError):
        await segment
    # page 1's own beat, then beats while page 2 is awaited, each with the cursor stored (a dead worker's segment
    # is retried after SEGMENT_HEARTBEAT of silence, not while it waits)
    assert [d[0]["cursor"] for d in beats][:1] == ["3"] and len(beats) >= 4
    assert {(d[0]["cursor"], d[0]["pages"]) for d in beats} == {("3", 1)}


async def test_runs_from_before_segments_still_fetch_stage_and_store_pages(hub: Hub) -> None:
    conn, acts, target, fetched = await _run_begun(hub)
    pager = PagerStandIn(customers(5))
    fetcher = SyncFetcher(ConnectionActivities(hub), pager.fetch)
    env = ActivityEnvironment()
    chained = await env.run(fetcher.fetch_page, fetched.model_copy(update={"page_no": 2, "chained": True}))
    assert chained.page_id == "" and pager.calls == []  # the run fetches that page from the cursor instead
    page = await env.run(fetcher.fetch_page, fetched)
    assert (page.cursor, page.records, page.next_cursor) == (None, 3, "3") and await staged_pages(hub, conn) == 1
    await acts.store_page(StoreInput(target=target, run_id="r1", page_no=1, cursor=None, page=page))
    assert (await state_of(hub, conn, MODEL)).cursor == "3" and await staged_pages(hub, conn) == 0


async def _activities(client: Client, workflow_id: str) -> list[list[str]]:
    """The activities each execution of the run scheduled, in order, following its continue-as-new chain."""
    first_run = (await client.get_workflow_handle(workflow_id).describe()).raw_description \
        .workflow_execution_info.first_run_id
    return [[event.activity_task_scheduled_event_attributes.activity_type.name for event in history.events
             if event.HasField("activity_task_scheduled_event_attributes")]
            for history in await _histories(client, workflow_id, first_run)]


def _input(conn: Connection, page_size: int):
    from activities.sync_types import SyncInput

    return SyncInput(target=SyncTarget(org_id=conn.org_id, connection_id=conn.id, model=MODEL), page_size=page_size)

