"""Webhook test kit: connections with secrets, signed posts, a worker for the webhook workflow, inbox reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.rule_runs import RuleActivities
from activities.webhooks import WebhookActivities
from app.webhooks_cli import signed_request
from connectors.events import scheme_for
from hub.auth import ensure_org
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.inbox import WebhookEvent
from hub.store.secrets import put_secret
from webhooks.inbox import CredentialCache
from worker import CHECKED_RUNNER, WORKFLOW_RUNNER
from workflows.webhook_event import WebhookEventWorkflow

ORG = "acme"
RUNNER = CHECKED_RUNNER  # the default sandbox: a nondeterministic workflow fails here
#: The failure proofs push hundreds of workflows through at once: they run on production's (faster) runner.
THROUGHPUT_RUNNER = WORKFLOW_RUNNER
SECRET = "whsec_test_secret"


async def make_connection(
    hub: Hub, provider: str, *, org: str = ORG, secrets: str | None = SECRET, config: dict | None = None,
    client_state: str | None = None, gong_public_key: str | None = None, status: str = "active",
) -> str:
    """An active connection with its webhook secret(s) stored through the vault; returns its id."""
    async with hub.db.session() as session:
        await ensure_org(session, org)
        conn = Connection(org_id=org, provider=provider, name=provider, auth_mode="api_key", config=config or {},
                          status=status)
        session.add(conn)
        await session.flush()
        owner = secret_owner(conn.id)
        for name, value in (("webhook_secrets", secrets), ("client_state", client_state),
                            ("gong_public_key", gong_public_key)):
            if value is not None:
                await put_secret(session, hub.vault, org, owner, name, value)
        return conn.id


async def post_signed(
    api: httpx.AsyncClient, hub: Hub, provider: str, connection_id: str, body: bytes, content_type: str,
    now: int | None = None, extra: dict | None = None,
) -> httpx.Response:
    """Post ``body`` signed the way the provider signs it, with the connection's stored secret."""
    creds, _ = await CredentialCache(hub.db, hub.vault).get(connection_id)
    url = f"http://hub.test/webhooks/{provider}/{connection_id}"
    signed, headers = signed_request(scheme_for(provider), body, content_type, creds, url, now=now)
    return await api.post(f"/webhooks/{provider}/{connection_id}", content=signed, headers={**headers, **(extra or {})})


async def inbox_rows(hub: Hub, **where: object) -> list[WebhookEvent]:
    """Inbox rows matching column equalities."""
    async with hub.db.session() as session:
        q = select(WebhookEvent).where(*(getattr(WebhookEvent, k) == v for k, v in where.items()))
        return list((await session.scalars(q.order_by(WebhookEvent.received_at))).all())


async def inbox_count(hub: Hub) -> int:
    """How many rows the inbox holds."""
    async with hub.db.session() as session:
        return await session.scalar(select(func.count()).select_from(WebhookEvent))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, every: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


@asynccontextmanager
async def webhook_worker(
    hub: Hub, client: Client, task_queue: str, extra_workflows: tuple[type, ...] = (),
    runner: SandboxedWorkflowRunner = RUNNER,
) -> AsyncIterator[Worker]:
    """A worker running WebhookEventWorkflow and its activities (and the rule activities) on ``task_queue``."""
    hooks, rules = WebhookActivities(hub), RuleActivities(hub)
    async with Worker(
        client, task_queue=task_queue, workflows=[WebhookEventWorkflow, *extra_workflows],
        activities=[*hooks.all(), rules.plan, rules.record_runs],
        workflow_runner=runner,
    ) as worker:  # fmt: skip
        yield worker
