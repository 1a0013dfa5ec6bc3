"""Shared by the sync tests: seeded connections, a stand-in pager, the sync workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.connections import ConnectionActivities
from activities.connector_types import ERR_RATE_LIMITED, provider_task_queue
from activities.sync import PageSource, SyncActivities, SyncFetcher
from activities.sync_types import PageData, RecordData, SyncInput, SyncTarget
from connectors.catalogue import RateLimit
from hub.auth import ensure_org
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.inbox import WebhookEvent
from hub.store.secrets import put_secret
from hub.store.sync import SyncedRecord, SyncPage, SyncState
from worker import CHECKED_RUNNER, configure_provider_queues
from workflows.sync import SyncWorkflow

AUTH_MODES = {"stripe": "api_key", "gong": "basic", "docusign": "jwt_grant", "microsoft": "client_credentials"}


async def seed_connection(
    hub: Hub, provider: str, *, base_url: str = "http://127.0.0.1:9", config: dict | None = None,
    secrets: dict[str, str] | None = None, org_id: str = "acme", status: str = "active",
) -> Connection:
    """An active connection of ``provider`` pointed at ``base_url`` with the given secrets."""
    async with hub.db.session() as session:
        await ensure_org(session, org_id)
        conn = Connection(org_id=org_id, provider=provider, name=f"{provider} sync test",
                          auth_mode=AUTH_MODES.get(provider, "api_key"), status=status,
                          config={"base_url": base_url, **(config or {})})
        session.add(conn)
        await session.flush()
        for name, value in (secrets or {"api_key": "sk_test_fake"}).items():
            await put_secret(session, hub.vault, org_id, secret_owner(conn.id), name, value)
    return conn


class PagerStandIn:
    """A provider behind the real sync fetches (a ``SyncFetcher`` page source): ``records`` in pages, the cursor
    an offset.

    A finished run's cursor is the end offset, so the next run reads only records appended since. ``calls``
    holds the cursor of every request; ``hold`` makes the first request from that cursor wait until cancelled
    (a worker stopped mid-fetch); ``fail`` makes every request fail with a provider error, ``fail_once`` the
    first request from that cursor fail with a retryable one.
    """

    def __init__(self, records: list[dict[str, Any]], *, hold: str | None = None, fail: str | None = None,
                 fail_once: str | None = None) -> None:
        self.records = records
        self.calls: list[str | None] = []
        self.hold, self.fail, self.fail_once = hold, fail, fail_once
        self.holding = asyncio.Event()

    async def fetch(self, target: SyncTarget, cursor: str | None, page_size: int) -> PageData:
        self.calls.append(cursor)
        if self.fail:
            raise ApplicationError(self.fail, type="ProviderError", non_retryable=True)
        if self.fail_once is not None and cursor == self.fail_once:
            self.fail_once = None
            raise ApplicationError("rate limited", type=ERR_RATE_LIMITED, next_retry_delay=timedelta(0))
        if self.hold is not None and cursor == self.hold:
            self.hold = None
            self.holding.set()
            await asyncio.Event().wait()  # until the worker stops and cancels us
        start = int(cursor or 0)
        chunk = self.records[start:start + page_size]
        end = start + len(chunk)
        return PageData(records=[RecordData(id=r["id"], payload=r) for r in chunk], next_cursor=str(end),
                        done=end >= len(self.records))


@asynccontextmanager
async def sync_workers(client: Client, hub: Hub, prefix: str, source: PageSource | None = None,
                       limit: RateLimit | None = None,
                       fetcher: type[SyncFetcher] = SyncFetcher) -> AsyncIterator[SyncActivities]:
    """The main queue (SyncWorkflow, sync bookkeeping, connection.mark_failed) and ``prefix``'s provider queue
    running ``fetcher``'s sync fetches (their pages from ``source`` if given, else from the provider) under
    ``limit`` (the catalogue's if None), configured as ``worker.py`` configures them."""
    limits = {prefix: limit} if limit else None
    connections = ConnectionActivities(hub, limits)
    acts = SyncActivities(hub)
    main = hub.settings.task_queue
    await configure_provider_queues(client, main, limits)
    try:
        async with (
            Worker(client, task_queue=main, workflows=[SyncWorkflow],
                   activities=[*acts.main_queue(), connections.mark_failed], workflow_runner=CHECKED_RUNNER,
                   disable_eager_activity_execution=True),
            Worker(client, task_queue=provider_task_queue(main, prefix),
                   activities=fetcher(connections, source).provider_queue()),
        ):
            yield acts
    finally:
        await connections.aclose()


async def run_sync(client: Client, hub: Hub, conn: Connection, model: str, *, workflow_id: str,
                   page_size: int | None = None, pages_per_execution: int | None = None) -> Any:
    """Run one SyncWorkflow to its end and return its summary."""
    inp = SyncInput(target=SyncTarget(org_id=conn.org_id, connection_id=conn.id, model=model), page_size=page_size)
    if pages_per_execution is not None:
        inp.pages_per_execution = pages_per_execution
    return await client.execute_workflow(SyncWorkflow.run, inp, id=workflow_id, task_queue=hub.settings.task_queue)


async def stored(hub: Hub, conn: Connection, model: str) -> dict[str, dict]:
    """The stored records of one model, by provider id."""
    async with hub.db.session() as session:
        rows = await session.scalars(select(SyncedRecord).where(SyncedRecord.connection_id == conn.id,
                                                                SyncedRecord.model == model))
        return {r.provider_id: r.payload for r in rows}


async def state_of(hub: Hub, conn: Connection, model: str) -> SyncState:
    """The sync's state row."""
    async with hub.db.session() as session:
        state = await session.get(SyncState, (conn.id, model))
        assert state is not None
        return state


async def inbox_rows(hub: Hub, conn: Connection) -> list[WebhookEvent]:
    """The connection's inbox rows."""
    async with hub.db.session() as session:
        return list(await session.scalars(select(WebhookEvent).where(WebhookEvent.connection_id == conn.id)))


async def record_count(hub: Hub, conn: Connection) -> int:
    """All synced records of a connection."""
    async with hub.db.session() as session:
        return await session.scalar(select(func.count()).select_from(SyncedRecord)
                                    .where(SyncedRecord.connection_id == conn.id))


async def post_webhook(api: Any, hub: Hub, provider: str, connection_id: str, body: bytes) -> Any:
    """Deliver ``body`` to the webhook endpoint signed as the provider signs it (the connection's secret)."""
    from app.webhooks_cli import signed_request
    from connectors.events import scheme_for
    from webhooks.inbox import CredentialCache

    creds, _ = await CredentialCache(hub.db, hub.vault).get(connection_id)
    url = f"http://hub.test/webhooks/{provider}/{connection_id}"
    signed, headers = signed_request(scheme_for(provider), body, "application/json", creds, url)
    return await api.post(f"/webhooks/{provider}/{connection_id}", content=signed, headers=headers)


async def staged_pages(hub: Hub, conn: Connection) -> int:
    """Pages fetched and not (yet) stored."""
    async with hub.db.session() as session:
        return await session.scalar(select(func.count()).select_from(SyncPage)
                                    .where(SyncPage.connection_id == conn.id))
