"""``connector.run_action`` on a provider task queue: 429 + Retry-After, 4xx, 5xx, the configured rate,
idempotency keys stable across retries, which connection an action runs on, and its heartbeats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities import connections
from activities.connector_types import ACTION_HEARTBEAT, ActionCall
from connectors.catalogue import RateLimit, catalogue
from hub import temporal as hub_temporal
from hub.runtime import Hub
from hub.store.connections import Connection
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, RunActions, connection_workers, seed_connection
from tests.fakes.oauth_server import OAuthFake


@pytest.fixture
def idp() -> Iterator[OAuthFake]:
    with OAuthFake() as fake:
        fake.register_client(CLIENT_ID, CLIENT_SECRET)
        yield fake


async def _connection(hub: Hub, idp: OAuthFake, **kw) -> Connection:
    access, refresh = idp.issue(CLIENT_ID)
    return await seed_connection(hub, idp.url, access_token=access, refresh_token=refresh, **kw)


def _call(conn: Connection | None, path: str = "/things", org: str = "acme", **params) -> ActionCall:
    return ActionCall(org_id=org, action="generic_oauth2.request", params={"path": path, **params},
                      connection_id=conn.id if conn else None)


async def _run(client: Client, hub: Hub, calls: list[ActionCall]) -> list:
    return await client.execute_workflow(
        RunActions.run, calls, id=f"run-{uuid.uuid4()}", task_queue=hub.settings.task_queue
    )


async def test_429_with_retry_after_2_is_retried_no_sooner_than_2_seconds(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _connection(hub, idp)
    idp.rate_limit(2, path=r"^/api/")
    async with connection_workers(client, hub):
        [result] = await _run(client, hub, [_call(conn)])
    assert not isinstance(result, str) and result.output["status"] == 200
    (first, _), (second, _) = [a for a in idp.arrivals if a[1].startswith("/api/")]
    assert second - first >= 2.0


async def test_other_4xx_fail_at_once_with_the_providers_message_and_5xx_are_retried(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _connection(hub, idp)
    idp.fail(404, "not_found", "thing 7 does not exist", path=r"^/api/missing")
    idp.fail(503, "unavailable", "try later", path=r"^/api/flaky", times=2)
    async with connection_workers(client, hub):
        missing, flaky = await _run(client, hub, [_call(conn, "/missing"), _call(conn, "/flaky")])
    assert missing == "ProviderError: generic_oauth2 answered 404: thing 7 does not exist"
    assert len(idp.calls(r"^/api/missing")) == 1
    assert not isinstance(flaky, str) and flaky.ok
    assert len(idp.calls(r"^/api/flaky")) == 3


async def test_idempotency_key_is_derived_from_workflow_and_activity_and_stable_across_retries(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _connection(hub, idp)
    idp.fail(500, "boom", "internal", path=r"^/api/charges")
    async with connection_workers(client, hub):
        [result] = await _run(client, hub, [_call(conn, "/charges", method="POST", json={"a": 1}, idempotent=True)])
    keys = [c.headers.get("idempotency-key") for c in idp.calls(r"^/api/charges")]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("run-") and keys[0].endswith("/1")
    assert result.output["body"]["idempotency_key"] == keys[0]
    assert result.output["body"]["received"] == {"a": 1}


async def test_provider_queue_never_exceeds_its_configured_rate(client: Client, hub: Hub, idp: OAuthFake) -> None:
    idp.limit_per_second = 5  # the provider answers 429 above 5 requests in any second
    conn = await _connection(hub, idp)
    async with connection_workers(client, hub, limit=RateLimit(per_second=5, headroom=0.6)):
        results = await _run(client, hub, [_call(conn, f"/r/{i}") for i in range(15)])
    assert all(not isinstance(r, str) for r in results)
    times = sorted(t for t, path in idp.arrivals if path.startswith("/api/"))
    assert len(times) == 15  # no request was refused (a 429 would show as an extra arrival)
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= 5


async def test_secrets_are_read_once_per_token_version_and_a_rotated_token_is_used_at_once(
    client: Client, hub: Hub, idp: OAuthFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    load_secrets = connections.load_secrets

    async def counted(session, vault, connection_id):
        reads.append(connection_id)
        return await load_secrets(session, vault, connection_id)

    monkeypatch.setattr(connections, "load_secrets", counted)
    conn = await _connection(hub, idp)
    async with connection_workers(client, hub):
        first = await _run(client, hub, [_call(conn, f"/a/{i}") for i in range(5)])
        assert reads == [conn.id]  # five actions, one read
        idp.expire_all()  # the provider now rejects the cached token
        second = await _run(client, hub, [_call(conn, f"/b/{i}") for i in range(5)])
        third = await _run(client, hub, [_call(conn, f"/c/{i}") for i in range(5)])
    assert all(not isinstance(r, str) for r in first + second + third)
    assert idp.token_calls.count("refresh_token") == 1
    assert len(reads) == 3  # + the refresh's own read + one read of version 2 for every later action
    calls = [path for _, path in idp.arrivals if path.startswith("/api/")]
    assert 5 < sum(p.startswith("/api/b/") for p in calls) <= 10  # those that began before the refresh met a 401
    assert sum(p.startswith("/api/c/") for p in calls) == 5  # the rotated token, straight from the cache


async def test_a_token_the_provider_dropped_meets_one_401_not_a_storm(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    """Forty actions at the provider's pace after it dropped the token: the first request meets a 401 and
    asks for a refresh; the rest wait for the new token (or take it once it is there) instead of meeting one.

    At 10/s a request leaves every 100 ms, so the first 401 is back before the next one leaves even on a loaded
    machine (at 50/s, 20 ms apart, a slow turn of the loop let a few more leave with the old token: flaky in CI)."""
    conn = await _connection(hub, idp)
    idp.token_delay = 1.0  # a token endpoint that takes its time: ten requests' worth at 10/s
    async with connection_workers(client, hub, limit=RateLimit(per_second=10)):
        await _run(client, hub, [_call(conn, "/warm")])
        idp.expire_all()
        results = await _run(client, hub, [_call(conn, f"/d/{i}") for i in range(40)])
    assert all(not isinstance(r, str) for r in results)
    assert idp.token_calls.count("refresh_token") == 1
    # one 401, and on a loaded machine up to two more: a request that left before the first 401 was read (CI: 42)
    assert len([path for _, path in idp.arrivals if path.startswith("/api/d/")]) <= 43


async def test_a_connection_with_its_own_limit_gets_its_weight_on_the_server(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    """config.rate_limit of 25/s on a provider of 10/s: the connection's fairness key weighs 2.5 on the provider's
    queue (the server hands its tasks out at 25/s), and its requests draw from a 25/s budget."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    conn = await _connection(hub, idp, config={"rate_limit": {"per_second": 25}})
    async with connection_workers(client, hub) as acts:
        [result] = await _run(client, hub, [_call(conn)])
    assert not isinstance(result, str)
    described = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace="default", task_queue=TaskQueue(name=f"{hub.settings.task_queue}-generic_oauth2"),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, report_config=True))
    assert dict(described.config.fairness_weight_overrides) == {conn.id: 2.5}
    assert acts.limit(catalogue().get("generic_oauth2"), conn).interval == 1 / (0.95 * 25)


async def test_a_weight_is_asked_for_once_and_a_refused_one_fails_no_action(
    client: Client, hub: Hub, idp: OAuthFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten actions of a connection with its own limit starting together ask the server for its weight once (the
    server rate-limits configuration updates: under load, hundreds of such calls failed their actions); when it
    refuses, every action still runs under the connection's budget, and a task that starts later sets it."""
    calls: list[dict | None] = []
    configure = hub_temporal.configure_fairness

    async def slow_then_refusing(client: Client, queue: str, **kwargs) -> None:
        calls.append(kwargs.get("weights"))
        await asyncio.sleep(0.5)  # a busy server: the other tasks start meanwhile
        if len(calls) == 1:
            raise RPCError("service rate limit exceeded", RPCStatusCode.RESOURCE_EXHAUSTED, b"")
        await configure(client, queue, **kwargs)

    monkeypatch.setattr(hub_temporal, "configure_fairness", slow_then_refusing)
    monkeypatch.setattr(connections, "WEIGHT_RETRY", 0.0)
    conn = await _connection(hub, idp, config={"rate_limit": {"per_second": 25}})
    async with connection_workers(client, hub):
        first = await _run(client, hub, [_call(conn, f"/w/{i}") for i in range(10)])
        second = await _run(client, hub, [_call(conn, f"/x/{i}") for i in range(10)])
    assert all(not isinstance(r, str) for r in first + second)
    assert calls == [{conn.id: 2.5}, {conn.id: 2.5}]  # refused (shared by those waiting), then set: no more asks


async def test_which_connection_an_action_runs_on(client: Client, hub: Hub, idp: OAuthFake) -> None:
    only = await _connection(hub, idp, org_id="solo")
    await _connection(hub, idp, org_id="duo")
    await _connection(hub, idp, org_id="duo")
    broken = await _connection(hub, idp, org_id="acme", status="needs_reauth")
    async with connection_workers(client, hub):
        default, ambiguous, needs, other_org, bad = await _run(client, hub, [
            _call(None, org="solo"), _call(None, org="duo"), _call(broken), _call(only, org="acme"),
            ActionCall(org_id="solo", action="generic_oauth2.request", params={"method": "BREW"}),
        ])
    assert not isinstance(default, str) and default.connection_id == only.id
    assert ambiguous.startswith("ConnectionUnavailable: more than one active generic_oauth2 connection")
    assert needs == f"ConnectionUnavailable: connection {broken.id} is needs_reauth"
    assert other_org.startswith("ConnectionUnavailable: no generic_oauth2 connection")
    assert bad.startswith("InvalidActionParams: invalid params for generic_oauth2.request")


async def test_an_action_heartbeats_while_the_provider_keeps_it_waiting(
    client: Client, hub: Hub, idp: OAuthFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await _connection(hub, idp)
    idp.respond_after(r"^/api/slow", 2.0)
    monkeypatch.setattr(connections, "ACTION_HEARTBEAT", timedelta(seconds=0.4))  # this worker: a beat every 0.1 s
    async with connection_workers(client, hub):
        handle = await client.start_workflow(RunActions.run, [_call(conn, "/slow")], id=f"run-{uuid.uuid4()}",
                                             task_queue=hub.settings.task_queue)  # fmt: skip
        beat, deadline = None, asyncio.get_running_loop().time() + 1.8  # before the provider answers
        while beat is None and asyncio.get_running_loop().time() < deadline:
            pending = (await handle.describe()).raw_description.pending_activities
            if pending and pending[0].HasField("last_heartbeat_time"):
                beat = pending[0].last_heartbeat_time
            await asyncio.sleep(0.05)
        [result] = await handle.result()
    assert beat is not None, "no heartbeat reached the server while the action waited"
    assert not isinstance(result, str) and result.output["status"] == 200
    scheduled = [e.activity_task_scheduled_event_attributes async for e in handle.fetch_history_events()
                 if e.HasField("activity_task_scheduled_event_attributes")]  # fmt: skip
    assert [s.heartbeat_timeout.ToTimedelta() for s in scheduled] == [ACTION_HEARTBEAT]  # a dead worker's: retried
