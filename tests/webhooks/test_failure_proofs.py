"""Failure proofs: Temporal down during a burst, the API killed after acknowledging, concurrent duplicates,
several relays at once. "Processed" is observed where it matters: the opportunity workflow's signals."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.rule_runs import RuleActivities
from activities.webhooks import WebhookActivities
from api import create_app
from app.runner import temporal_cli
from hub.runtime import Hub, TemporalUnavailable
from hub.store.inbox import WebhookEvent
from hub.temporal import data_converter
from tests.conftest import POSTGRES_URL, shared_data
from tests.webhooks.conftest import (
    ORG,
    THROUGHPUT_RUNNER,
    inbox_rows,
    make_connection,
    post_signed,
    wait_until,
    webhook_worker,
)
from tests.webhooks.standins import OpportunityStandIn
from webhooks.relay import Relay
from workflows.webhook_event import WebhookEventWorkflow


def _event(n: int, opportunity_id: str | None) -> bytes:
    doc = json.loads(shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes())
    doc["id"] = f"evt_burst_{n:05d}"
    doc["data"]["object"]["metadata"] = {"opportunity_id": opportunity_id} if opportunity_id else {}
    return json.dumps(doc).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start_server(port: int) -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        port=port, dev_server_existing_path=temporal_cli(), dev_server_extra_args=["--log-level", "error"]
    )


async def _all_received(client: Client, opps: list[str]) -> list[dict]:
    out = []
    for opp in opps:
        out += await client.get_workflow_handle(f"opportunity/{ORG}/{opp}").query(OpportunityStandIn.received)
    return out


async def _done(hub: Hub, n: int) -> bool:
    async with hub.db.session() as session:
        done = await session.scalar(select(func.count()).where(WebhookEvent.status == "done"))
    return done == n


@asynccontextmanager
async def _app(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    """One API process (its own intake and group-commit writer), without its relay."""
    app = create_app(hub)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.test") as http:
        yield http


async def test_1000_events_posted_while_temporal_is_down_are_processed_exactly_once(
    hub: Hub, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if POSTGRES_URL and hub.db.is_sqlite:
        pytest.skip("the 1,000-event proof takes a minute; it runs once, on PostgreSQL, where that is configured")
    port, opps = _free_port(), [f"{task_queue}-{i}" for i in range(10)]  # unique on the shared server
    relay_hub = Hub(settings=hub.settings, db=hub.db, vault=hub.vault, temporal_address=f"127.0.0.1:{port}")
    relay = Relay(relay_hub, task_queue=task_queue, batch=200, concurrency=32)
    server = await _start_server(port)
    await relay_hub.temporal()  # the relay knows Temporal, then Temporal goes away
    await server.shutdown()

    con = await make_connection(hub, "stripe")
    asked_for_temporal = []

    async def temporal_is_down() -> Client:
        asked_for_temporal.append(True)
        raise TemporalUnavailable("Temporal is down")

    with monkeypatch.context() as patched:  # the API below runs on a hub that cannot reach Temporal
        patched.setattr(relay_hub, "temporal", temporal_is_down)
        async with _app(relay_hub) as api:
            for chunk in range(0, 1000, 50):
                answers = await asyncio.gather(*(
                    post_signed(api, hub, "stripe", con, _event(n, opps[n % 10]), "application/json")
                    for n in range(chunk, chunk + 50)
                ))  # fmt: skip
                assert all(r.status_code == 200 and r.json()["accepted"] == 1 for r in answers)
    assert asked_for_temporal == []  # acceptance never waited for (or even asked for) Temporal
    for _ in range(3):
        await relay.run_once()  # Temporal is down: rows are released, none is lost
        await asyncio.sleep(0.2)
    rows = await inbox_rows(hub)
    assert len(rows) == 1000 and {r.status for r in rows} == {"pending"}

    server = await _start_server(port)  # Temporal is back, same address
    try:
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=data_converter(hub.vault, hub.keyring))
        async with webhook_worker(hub, client, task_queue, extra_workflows=(OpportunityStandIn,), runner=THROUGHPUT_RUNNER):
            for opp in opps:
                await client.start_workflow(OpportunityStandIn.run, id=f"opportunity/{ORG}/{opp}", task_queue=task_queue)
            relay._backoff = 0.0  # do not sit out the back-off the outage earned
            runner = asyncio.create_task(relay.run())
            await wait_until(lambda: _done(relay_hub, 1000), timeout=240, every=0.5)
            relay.stop()
            await runner
            received = await _all_received(client, opps)
    finally:
        await server.shutdown()
    ids = Counter(e["source"]["event_id"] for e in received)
    assert len(ids) == 1000 and set(ids.values()) == {1}
    assert {e["data"]["opportunity_id"] for e in received} == set(opps)


async def test_event_acknowledged_by_an_api_that_then_dies_is_still_processed(
    hub: Hub, client: Client, task_queue: str
) -> None:
    con = await make_connection(hub, "stripe")
    async with _app(hub) as dying_api:
        for n in range(5):
            r = await post_signed(dying_api, hub, "stripe", con, _event(n, f"{task_queue}-0"), "application/json")
            assert r.status_code == 200
    dead_relay = Relay(hub, task_queue=task_queue, lease=timedelta(seconds=1))
    async with hub.db.session() as session:  # the dying process had leased the rows, then vanished
        from hub.store import inbox

        assert len(await inbox.claim(session, dead_relay.owner, 100, dead_relay.lease)) == 5
    fresh = Relay(hub, task_queue=task_queue)
    assert await fresh.run_once() == 0  # leased by the dead process...
    await asyncio.sleep(1.1)  # ...until its lease runs out
    async with webhook_worker(hub, client, task_queue, extra_workflows=(OpportunityStandIn,), runner=THROUGHPUT_RUNNER):
        await client.start_workflow(OpportunityStandIn.run, id=f"opportunity/{ORG}/{task_queue}-0", task_queue=task_queue)
        await fresh.drain()
        await wait_until(lambda: _done(hub, 5))
        received = await _all_received(client, [f"{task_queue}-0"])
    assert sorted(e["source"]["event_id"] for e in received) == [f"evt_burst_{n:05d}" for n in range(5)]


async def test_same_event_delivered_3x_concurrently_is_processed_once(
    hub: Hub, client: Client, task_queue: str
) -> None:
    con = await make_connection(hub, "stripe")
    body = _event(1, f"{task_queue}-1")
    async with _app(hub) as a, _app(hub) as b, _app(hub) as c:
        same_process = await asyncio.gather(*(post_signed(a, hub, "stripe", con, body, "application/json")
                                              for _ in range(3)))
        body2 = _event(2, f"{task_queue}-1")
        three_processes = await asyncio.gather(*(post_signed(x, hub, "stripe", con, body2, "application/json")
                                                 for x in (a, b, c)))
    for answers in (same_process, three_processes):
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert sorted(r.json()["accepted"] for r in answers) == [0, 0, 1]
    assert len(await inbox_rows(hub)) == 2
    async with webhook_worker(hub, client, task_queue, extra_workflows=(OpportunityStandIn,), runner=THROUGHPUT_RUNNER):
        await client.start_workflow(OpportunityStandIn.run, id=f"opportunity/{ORG}/{task_queue}-1", task_queue=task_queue)
        await asyncio.gather(Relay(hub, task_queue=task_queue).drain(), Relay(hub, task_queue=task_queue).drain())
        await wait_until(lambda: _done(hub, 2))
        received = await _all_received(client, [f"{task_queue}-1"])
    assert sorted(e["source"]["event_id"] for e in received) == ["evt_burst_00001", "evt_burst_00002"]


class CountingRelay(Relay):
    """A relay that notes every workflow start it makes."""

    starts: Counter = Counter()

    async def _start_one(self, client, w, down):
        CountingRelay.starts[w.row.id] += 1
        return await super()._start_one(client, w, down)


async def test_several_relays_never_relay_a_row_twice(hub: Hub, client: Client, task_queue: str) -> None:
    con = await make_connection(hub, "stripe")
    async with _app(hub) as api:
        for chunk in range(0, 300, 50):
            await asyncio.gather(*(post_signed(api, hub, "stripe", con, _event(n, f"{task_queue}-2"), "application/json")
                                   for n in range(chunk, chunk + 50)))
    CountingRelay.starts = Counter()
    relays = [CountingRelay(hub, task_queue=task_queue, batch=25) for _ in range(3)]
    await asyncio.gather(*(r.drain() for r in relays))
    assert len(CountingRelay.starts) == 300 and set(CountingRelay.starts.values()) == {1}
    rows = await inbox_rows(hub)
    assert {r.status for r in rows} == {"relayed"}


async def test_relayed_workflows_survive_a_temporal_restart(hub: Hub, task_queue: str, tmp_path) -> None:
    port, db_file = _free_port(), str(tmp_path / "temporal.db")
    relay_hub = Hub(settings=hub.settings, db=hub.db, vault=hub.vault, temporal_address=f"127.0.0.1:{port}")
    con = await make_connection(hub, "stripe")
    async with _app(hub) as api:
        for n in range(20):
            await post_signed(api, hub, "stripe", con, _event(n, f"{task_queue}-3"), "application/json")
    server = await WorkflowEnvironment.start_local(
        port=port, dev_server_existing_path=temporal_cli(), dev_server_database_filename=db_file,
        dev_server_extra_args=["--log-level", "error"],
    )  # fmt: skip
    client = await Client.connect(f"127.0.0.1:{port}", data_converter=data_converter(hub.vault, hub.keyring))
    await client.start_workflow(OpportunityStandIn.run, id=f"opportunity/{ORG}/{task_queue}-3", task_queue=task_queue)
    await Relay(relay_hub, task_queue=task_queue).drain()  # started; no worker yet
    assert {r.status for r in await inbox_rows(hub)} == {"relayed"}
    await server.shutdown()
    server = await WorkflowEnvironment.start_local(
        port=port, dev_server_existing_path=temporal_cli(), dev_server_database_filename=db_file,
        dev_server_extra_args=["--log-level", "error"],
    )  # fmt: skip
    try:
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=data_converter(hub.vault, hub.keyring))
        hooks, rules = WebhookActivities(hub), RuleActivities(hub)
        async with Worker(client, task_queue=task_queue, workflows=[WebhookEventWorkflow, OpportunityStandIn],
                          activities=[hooks.complete_event, hooks.fail_event, rules.plan, rules.record_runs],
                          workflow_runner=THROUGHPUT_RUNNER):
            await wait_until(lambda: _done(hub, 20), timeout=120)
            received = await _all_received(client, [f"{task_queue}-3"])
    finally:
        await server.shutdown()
    assert sorted(e["source"]["event_id"] for e in received) == [f"evt_burst_{n:05d}" for n in range(20)]


async def test_one_orgs_backlog_delays_another_orgs_events_by_a_turn_not_the_backlog(hub: Hub) -> None:
    """The relay leases due rows with the orgs taking turns: an org's 250-event flood, received first, leaves
    room in the very first lease for the events two other orgs sent after it."""
    from hub.store import inbox
    from hub.store.inbox import NewEvent

    def events(org: str, n: int) -> list[NewEvent]:
        return [NewEvent(org_id=org, connection_id=f"con-{org}", provider="stripe", event_id=f"evt_{org}_{i}",
                         event_type="invoice.paid", headers={}, body=b"{}", content_type="application/json")
                for i in range(n)]  # fmt: skip

    for org, n in (("flood", 250), ("late-one", 1), ("late-three", 3)):
        async with hub.db.session() as session:
            await inbox.insert_new(session, events(org, n))
    async with hub.db.session() as session:
        first = await inbox.claim(session, "relay-a", 10, timedelta(seconds=60))
    # turns: 1st of each org (3), 2nd of flood and late-three (2), 3rd of both (2), then the flood's 4th-6th (3)
    assert Counter(r.org_id for r in first) == {"flood": 6, "late-three": 3, "late-one": 1}
    assert {r.event_id for r in first if r.org_id == "late-three"} == {f"evt_late-three_{i}" for i in range(3)}
    async with hub.db.session() as session:
        second = await inbox.claim(session, "relay-b", 100, timedelta(seconds=60))
    assert Counter(r.org_id for r in second) == {"flood": 100}  # nothing leased twice; the rest: the flood's
    assert not {r.id for r in first} & {r.id for r in second}
