"""What happens when a connection becomes usable or is deleted, in one place for the API's routes and the
connection activities alike."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.service import RPCError

from activities import sync_schedules
from activities.connector_types import (
    CONNECTION_WORKFLOW,
    STOP_SIGNAL,
    TOKENS_STORED_SIGNAL,
    ConnectionRef,
    connection_workflow_id,
)
from hub.runtime import Hub, TemporalUnavailable
from hub.store.connections import Connection, secret_owner
from hub.store.oauth import OAuthState
from hub.store.orgs import record_audit
from hub.store.secrets import delete_secrets

log = logging.getLogger("activities.connection_lifecycle")


async def activated(hub: Hub, conn: Connection, *, adopt_tokens: bool = True) -> None:
    """The connection is usable from now on (authorised in a browser, or its first or renewed token stored).

    Unless its own workflow stored the tokens (``adopt_tokens=False``), its ConnectionWorkflow is signalled, or
    started, to adopt them (best effort: the first action that needs a refresh starts it too); its sync and Graph
    subscription schedules run now.
    """
    if adopt_tokens:
        try:
            client = await hub.temporal()
            await client.start_workflow(
                CONNECTION_WORKFLOW, ConnectionRef(org_id=conn.org_id, connection_id=conn.id),
                id=connection_workflow_id(conn.org_id, conn.id), task_queue=hub.settings.task_queue,
                start_signal=TOKENS_STORED_SIGNAL,
            )  # fmt: skip
        except (TemporalUnavailable, RPCError) as exc:
            log.warning("connection %s authorised but its workflow could not be started: %s", conn.id, exc)
    await sync_schedules.connection_changed(hub, conn)


async def delete(session: AsyncSession, conn: Connection, actor: str) -> None:
    """Delete the connection in the caller's transaction: ``disabled``, its secrets and pending authorisations
    erased, audited. Call ``deleted`` once that transaction is committed."""
    conn.status, conn.next_refresh_at = "disabled", None
    await delete_secrets(session, secret_owner(conn.id))
    for state in await session.scalars(select(OAuthState).where(OAuthState.connection_id == conn.id)):
        await session.delete(state)
    await record_audit(session, conn.org_id, actor, "connection.deleted", f"connection/{conn.id}")


async def deleted(hub: Hub, conn: Connection) -> None:
    """After the deletion is committed: its workflow stops and its schedules go (best effort: with Temporal away,
    the workflow's next activity finds the connection gone)."""
    try:
        client = await hub.temporal()
        await client.get_workflow_handle(connection_workflow_id(conn.org_id, conn.id)).signal(STOP_SIGNAL)
    except (TemporalUnavailable, RPCError):
        pass  # no workflow running (or Temporal away)
    await sync_schedules.connection_changed(hub, conn)
