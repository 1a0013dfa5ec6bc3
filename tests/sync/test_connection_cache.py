"""Provider calls reuse a connection's row for a few seconds, but not past a token refresh nor a failed load;
a call does not start on a token this process is renewing."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.exceptions import ApplicationError

from activities import connections
from activities.connections import ConnectionActivities
from activities.connector_types import TokenState
from connectors.catalogue import provider
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.secrets import put_secret
from tests.sync.support import seed_connection


async def _set(hub: Hub, conn: Connection, **values: object) -> None:
    async with hub.db.session() as session:
        row = await session.get(Connection, conn.id)
        for name, value in values.items():
            setattr(row, name, value)


async def test_the_row_is_reused_until_a_token_refresh_moves_its_version_on(hub: Hub) -> None:
    conn = await seed_connection(hub, "stripe")
    acts = ConnectionActivities(hub)
    first = await acts.usable_connection(conn.org_id, "stripe", conn.id)
    await _set(hub, conn, token_version=2)
    assert await acts.usable_connection(conn.org_id, "stripe", conn.id) is first  # no load per call

    async def refreshed(_conn: Connection, _seen: int) -> TokenState:  # the ConnectionWorkflow's answer
        return TokenState(status="active", version=2)

    acts._ask_workflow = refreshed
    assert (await acts.request_fresh_token(first, 1)).version == 2
    assert (await acts.usable_connection(conn.org_id, "stripe", conn.id)).token_version == 2


async def test_the_row_is_loaded_again_after_its_time_and_a_refused_connection_is_not_kept(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await seed_connection(hub, "stripe")
    acts = ConnectionActivities(hub)
    monkeypatch.setattr(connections, "CONNECTION_TTL", 0.0)
    await acts.usable_connection(conn.org_id, "stripe", conn.id)
    monkeypatch.undo()
    await _set(hub, conn, status="needs_reauth")
    with pytest.raises(ApplicationError, match="needs_reauth"):
        await acts.usable_connection(conn.org_id, "stripe", conn.id)
    await _set(hub, conn, status="active")
    assert (await acts.usable_connection(conn.org_id, "stripe", conn.id)).status == "active"


async def test_a_call_starting_while_its_token_is_renewed_waits_for_the_new_one(hub: Hub) -> None:
    conn = await seed_connection(hub, "docusign", secrets={"access_token": "old", "private_key": "pem"})
    acts = ConnectionActivities(hub)
    answer = asyncio.Event()

    async def renewed(_conn: Connection, seen: int) -> TokenState:  # the ConnectionWorkflow: stores, then answers
        await answer.wait()
        async with hub.db.session() as session:
            await put_secret(session, hub.vault, conn.org_id, secret_owner(conn.id), "access_token", "new")
        return TokenState(status="active", version=seen + 1)

    acts._ask_workflow = renewed
    renewal = asyncio.create_task(acts.request_fresh_token(conn, conn.token_version))  # another call met a 401
    await asyncio.sleep(0)
    assert acts.renewing(conn.id, conn.token_version)
    held = await acts.secrets_of(conn.id, conn.token_version)
    tokens = connections._StoredTokens(acts, conn, provider("docusign"), held)
    token = asyncio.create_task(tokens.access_token())
    await asyncio.sleep(0.05)
    assert not token.done()  # the token under renewal is not handed out: the call would only meet a 401
    answer.set()
    assert await token == "new"
    assert (await renewal).version == conn.token_version + 1 == tokens.version
