"""ConnectionWorkflow on the real dev server against a real local OAuth2 server: single-flight refresh,
rotated refresh tokens persisted (old never reused), invalid_grant → needs_reauth, scheduled refresh."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from activities import connections as connection_activities
from activities import sync_schedules
from activities.connector_types import (
    FRESH_TOKEN_UPDATE,
    ActionCall,
    ConnectionRef,
    RefreshInput,
    TokenRequest,
    TokenState,
    connection_workflow_id,
)
from hub.runtime import Hub
from hub.store.base import utcnow
from hub.store.connections import Connection
from hub.store.oauth import load_secrets, store_tokens
from hub.store.orgs import AuditEntry
from tests.connectors.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST,
    RulesStandIn,
    RunActions,
    connection_workers,
    seed_connection,
)
from tests.fakes.oauth_server import OAuthFake
from workflows.connection import ConnectionWorkflow


@pytest.fixture
def idp() -> Iterator[OAuthFake]:
    with OAuthFake(expires_in=3600) as fake:
        fake.register_client(CLIENT_ID, CLIENT_SECRET)
        yield fake


async def _authorised(hub: Hub, idp: OAuthFake, **kw) -> Connection:
    access, refresh = idp.issue(CLIENT_ID)
    return await seed_connection(hub, idp.url, access_token=access, refresh_token=refresh, **kw)


def _calls(conn: Connection, n: int, path: str = "things") -> list[ActionCall]:
    return [
        ActionCall(org_id=conn.org_id, action="generic_oauth2.request", params={"path": f"/{path}/{i}"},
                   connection_id=conn.id)
        for i in range(n)
    ]


async def test_100_concurrent_actions_on_a_rejected_token_cause_exactly_one_refresh(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _authorised(hub, idp)
    old_refresh = (await _secrets(hub, conn))["refresh_token"]
    idp.expire_all()  # the provider now answers 401 to the stored token, which the hub believes valid
    idp.token_delay = 0.3  # a slow token endpoint widens any race
    async with connection_workers(client, hub, limit=FAST):
        results = await client.execute_workflow(
            RunActions.run, _calls(conn, 100), id=f"run-{uuid.uuid4()}", task_queue=hub.settings.task_queue
        )
    assert all(not isinstance(r, str) and r.ok for r in results), [r for r in results if isinstance(r, str)][:3]
    assert idp.token_calls == ["refresh_token"]
    assert len(idp.calls(r"^/api/things/", "GET")) >= 100
    stored = await _secrets(hub, conn)
    assert stored["refresh_token"] != old_refresh and old_refresh in idp.dead_refresh
    async with hub.db.session() as s:
        row = await s.get(Connection, conn.id)
        assert row.token_version == 2 and row.status == "active" and row.next_refresh_at is not None


async def test_100_concurrent_updates_single_flight_and_outdated_callers_get_the_current_version(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _authorised(hub, idp)
    idp.token_delay = 0.2
    async with connection_workers(client, hub):
        handle = await client.start_workflow(
            ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
            id=connection_workflow_id(conn.org_id, conn.id), task_queue=hub.settings.task_queue,
        )
        states = await asyncio.gather(*(_ask(handle, seen_version=1) for _ in range(100)))
        assert {s.version for s in states} == {2}
        assert idp.token_calls == ["refresh_token"]
        # a caller that still holds version 2 (its token was rejected again) gets exactly one more refresh
        again = await handle.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=2), result_type=TokenState)
        assert again.version == 3 and idp.token_calls == ["refresh_token", "refresh_token"]
        await handle.signal(ConnectionWorkflow.stop)
        assert await handle.result() == "stopped"


async def test_rotated_refresh_token_is_persisted_and_the_old_one_never_reused(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _authorised(hub, idp)
    seen = []
    async with connection_workers(client, hub):
        handle = await client.start_workflow(
            ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
            id=connection_workflow_id(conn.org_id, conn.id), task_queue=hub.settings.task_queue,
        )
        for version in (1, 2, 3):
            seen.append((await _secrets(hub, conn))["refresh_token"])
            state = await handle.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=version),
                                                result_type=TokenState)
            assert state.version == version + 1
        await handle.signal(ConnectionWorkflow.stop)
        assert await handle.result() == "stopped"
    replayer = Replayer(workflows=[ConnectionWorkflow], data_converter=client.data_converter)
    await replayer.replay_workflow(await handle.fetch_history())  # deterministic
    presented = [c.form()["refresh_token"] for c in idp.calls(r"^/token$", "POST")]
    assert presented == seen  # each refresh presented the token stored by the previous one
    assert len(set(presented)) == 3  # never the same one twice
    assert set(presented) <= idp.dead_refresh
    assert (await _secrets(hub, conn))["refresh_token"] in idp.refresh  # the live one is the stored one


async def test_invalid_grant_marks_needs_reauth_audits_and_routes_connection_failed(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _authorised(hub, idp)
    idp.expire_all()
    idp.refuse("invalid_grant")
    rules = RulesStandIn()
    async with connection_workers(client, hub, rules=rules):
        results = await client.execute_workflow(
            RunActions.run, _calls(conn, 3), id=f"run-{uuid.uuid4()}", task_queue=hub.settings.task_queue
        )
        handle = client.get_workflow_handle(connection_workflow_id(conn.org_id, conn.id))
        assert await handle.result() == "needs_reauth"
    assert all(isinstance(r, str) and "re-authorisation" in r for r in results), results
    assert idp.token_calls == ["refresh_token"]  # refused once; nobody tried again
    async with hub.db.session() as s:
        row = await s.get(Connection, conn.id)
        assert row.status == "needs_reauth" and "invalid_grant" in row.last_error
        audit = (await s.scalars(select(AuditEntry).where(AuditEntry.action == "connection.failed"))).all()
    assert [a.target for a in audit] == [f"connection/{conn.id}"]
    assert audit[0].detail["event"]["reason"] == row.last_error
    assert [e["type"] for e in rules.events] == ["connection.failed"]
    assert rules.events[0]["event"]["connection_id"] == conn.id
    with pytest.raises(WorkflowUpdateFailedError):  # a needs_reauth connection refuses refresh requests
        async with connection_workers(client, hub):
            h = await client.start_workflow(
                ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
                id=f"again-{uuid.uuid4()}", task_queue=hub.settings.task_queue,
            )
            await h.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=1), result_type=TokenState)


async def test_scheduled_refresh_follows_the_tokens_lifetime(client: Client, hub: Hub, idp: OAuthFake) -> None:
    """Refreshed a fifth of its lifetime early — a 2-second token every 1.6 s — and never more often than the
    token lives (a fixed lead longer than the lifetime would refresh without end)."""
    idp.expires_in = 2
    conn = await _authorised(hub, idp, expires_in=None)
    async with connection_workers(client, hub):
        handle = await client.start_workflow(
            ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
            id=connection_workflow_id(conn.org_id, conn.id), task_queue=hub.settings.task_queue,
        )
        await handle.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=1), result_type=TokenState)
        started = time.monotonic()
        for _ in range(100):  # the scheduled refresh is stored, not just requested
            state = await handle.query(ConnectionWorkflow.status)
            if state.version >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)
        elapsed = time.monotonic() - started
        await handle.signal(ConnectionWorkflow.stop)
    assert idp.token_calls[:2] == ["refresh_token", "refresh_token"]
    assert state.version >= 3
    scheduled = len(idp.token_calls) - 1  # after the requested one
    assert 2 <= scheduled <= elapsed / 1.6 + 1, (scheduled, elapsed)


async def _ask(handle: WorkflowHandle, seen_version: int) -> TokenState:
    """Update fresh_token, retrying what the server aborts or refuses while more than 10 updates are in
    flight on one workflow (as the activity does)."""
    for attempt in range(30):
        try:
            return await handle.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=seen_version),
                                               result_type=TokenState)
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.RESOURCE_EXHAUSTED) or attempt == 29:
                raise
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0) * random.uniform(0.5, 1.0))  # spread the retries
    raise AssertionError("unreachable")


async def _secrets(hub: Hub, conn: Connection) -> dict[str, str]:
    async with hub.db.session() as s:
        return await load_secrets(s, hub.vault, conn.id)



async def test_crash_safety_tokens_are_stored_by_the_activity_that_received_them(
    hub: Hub, idp: OAuthFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing database write right after the token endpoint answered is retried in place (the rotated
    refresh token is never dropped), and a retried activity whose tokens were already stored is a no-op."""
    conn = await _authorised(hub, idp)
    writes = []

    async def flaky_store(*args, **kwargs):
        writes.append(kwargs["from_version"])
        if len(writes) == 1:
            raise OperationalError("UPDATE connections", {}, Exception("database is locked"))
        return await store_tokens(*args, **kwargs)

    monkeypatch.setattr(connection_activities, "store_tokens", flaky_store)
    acts = connection_activities.ConnectionActivities(hub)
    env = ActivityEnvironment()
    ref = RefreshInput(org_id=conn.org_id, connection_id=conn.id, from_version=1)
    state = await env.run(acts.refresh, ref)
    assert state.version == 2 and writes == [1, 1]
    assert idp.token_calls == ["refresh_token"]
    assert (await _secrets(hub, conn))["refresh_token"] in idp.refresh  # the live, rotated one
    again = await env.run(acts.refresh, ref)  # the same activity retried after it had stored: no second call
    assert again.version == 2 and idp.token_calls == ["refresh_token"]


async def test_a_refresh_that_makes_a_connection_active_runs_its_schedules_now(
    hub: Hub, idp: OAuthFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that needed re-authorisation (or was pending) and gets a token from a refresh is usable from
    then on: its sync and subscription schedules are told at once, as the connections API tells them."""
    changed: list[tuple[str, str]] = []

    async def record(_hub: Hub, connection: Connection) -> None:
        changed.append((connection.id, connection.status))

    monkeypatch.setattr(sync_schedules, "connection_changed", record)
    acts, env = connection_activities.ConnectionActivities(hub), ActivityEnvironment()
    conn = await _authorised(hub, idp)
    async with hub.db.session() as s:
        (await s.get(Connection, conn.id)).status = "needs_reauth"
    await env.run(acts.refresh, RefreshInput(org_id=conn.org_id, connection_id=conn.id, from_version=1))
    assert changed == [(conn.id, "active")]
    await env.run(acts.refresh, RefreshInput(org_id=conn.org_id, connection_id=conn.id, from_version=2))
    assert changed == [(conn.id, "active")]  # it was active already: nothing to tell


async def test_invalid_grant_after_an_interrupted_refresh_says_so(hub: Hub, idp: OAuthFake) -> None:
    conn = await _authorised(hub, idp)
    async with hub.db.session() as s:
        (await s.get(Connection, conn.id)).refresh_pending_since = utcnow()
    idp.refuse("invalid_grant")
    acts = connection_activities.ConnectionActivities(hub)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            acts.refresh, RefreshInput(org_id=conn.org_id, connection_id=conn.id, from_version=1)
        )
    assert err.value.type == "ReauthRequired" and err.value.non_retryable
    assert "interrupted" in err.value.message


async def test_an_overdue_refresh_happens_as_soon_as_the_workflow_starts(
    client: Client, hub: Hub, idp: OAuthFake
) -> None:
    conn = await _authorised(hub, idp)
    async with hub.db.session() as s:
        (await s.get(Connection, conn.id)).next_refresh_at = utcnow() - timedelta(hours=1)  # worker was down
    async with connection_workers(client, hub):
        handle = await client.start_workflow(
            ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
            id=connection_workflow_id(conn.org_id, conn.id), task_queue=hub.settings.task_queue,
        )
        for _ in range(100):
            if idp.token_calls:
                break
            await asyncio.sleep(0.1)
        await handle.signal(ConnectionWorkflow.stop)
        assert await handle.result() == "stopped"
    assert idp.token_calls == ["refresh_token"]
