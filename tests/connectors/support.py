"""Shared by the connector and connection tests: seeded connections, workers, a workflow that runs actions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import ActivityError
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():  # the sandbox re-runs this module for the stand-in workflows
    from activities.connections import ConnectionActivities
    from activities.connector_types import ActionCall, ActionResult, provider_task_queue
    from activities.rule_types import RecordRunsInput, RulePlan, RulePlanInput
    from connectors.catalogue import RateLimit
    from hub.runtime import Hub
    from hub.store.base import utcnow
    from hub.store.connections import Connection, secret_owner
    from hub.store.secrets import put_secret
    from worker import WORKFLOW_RUNNER, configure_provider_queues
    from workflows.actions import execute_action
    from workflows.connection import ConnectionWorkflow

CLIENT_ID = "hub-client"
CLIENT_SECRET = "canary-client-secret-7f3a9c"
FAST = RateLimit(per_second=10_000)  # for tests that are not about rates


@workflow.defn(sandboxed=False)
class RunActions:
    """Runs every call concurrently through ``execute_action``; returns results or error strings."""

    @workflow.run
    async def run(self, calls: list[ActionCall]) -> list[ActionResult | str]:
        async def one(call: ActionCall) -> ActionResult | str:
            try:
                return await execute_action(call, schedule_to_close_timeout=timedelta(minutes=2))
            except ActivityError as exc:
                cause = exc.cause
                return f"{getattr(cause, 'type', type(cause).__name__)}: {getattr(cause, 'message', cause)}"

        return list(await asyncio.gather(*(one(c) for c in calls)))


class RulesStandIn:
    """Stand-ins for ``rules.plan`` / ``rules.record_runs``: record the events routed to rules."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    @activity.defn(name="rules.plan")
    async def plan(self, inp: RulePlanInput) -> RulePlan:
        self.events.extend(inp.events)
        return RulePlan()

    @activity.defn(name="rules.record_runs")
    async def record_runs(self, inp: RecordRunsInput) -> None:
        return None


async def seed_connection(
    hub: Hub,
    fake_url: str,
    *,
    org_id: str = "acme",
    provider: str = "generic_oauth2",
    access_token: str | None = None,
    refresh_token: str | None = None,
    expires_in: float | None = 3600,
    status: str = "active",
    config: dict | None = None,
    extra_secrets: dict[str, str] | None = None,
) -> Connection:
    """A connection as the callback would leave it, pointed at the fake (``/authorize``, ``/token``, ``/api``)."""
    from hub.auth import ensure_org

    now = utcnow()
    async with hub.db.session() as session:
        await ensure_org(session, org_id)
        conn = Connection(
            org_id=org_id, provider=provider, name=f"{provider} test", auth_mode="oauth2_code_pkce", status=status,
            config={"client_id": CLIENT_ID, "authorization_url": f"{fake_url}/authorize",
                    "token_url": f"{fake_url}/token", "base_url": f"{fake_url}/api", **(config or {})},
            token_version=1 if access_token else 0,
            access_expires_at=None if expires_in is None else now + timedelta(seconds=expires_in),
            next_refresh_at=None, last_refresh_at=now,
        )
        session.add(conn)
        await session.flush()
        owner = secret_owner(conn.id)
        values = {"client_secret": CLIENT_SECRET, "access_token": access_token, "refresh_token": refresh_token,
                  **(extra_secrets or {})}
        for name, value in values.items():
            if value:
                await put_secret(session, hub.vault, org_id, owner, name, value)
    return conn


@asynccontextmanager
async def connection_workers(
    client: Client, hub: Hub, *, provider_prefix: str = "generic_oauth2", limit: RateLimit | None = None,
    rules: RulesStandIn | None = None,
) -> AsyncIterator[ConnectionActivities]:
    """The main queue (ConnectionWorkflow, RunActions, connection.* activities, rule stand-ins) and one
    provider queue running ``connector.run_action`` under ``limit`` (the catalogue's if None), configured on
    the server as the worker configures it."""
    limits = {provider_prefix: limit} if limit else None
    acts = ConnectionActivities(hub, limits)
    rules = rules or RulesStandIn()
    main = hub.settings.task_queue
    await configure_provider_queues(client, main, limits)
    try:
        async with (
            Worker(client, task_queue=main, workflows=[ConnectionWorkflow, RunActions],
                   activities=[*acts.lifecycle(), rules.plan, rules.record_runs],
                   workflow_runner=WORKFLOW_RUNNER, disable_eager_activity_execution=True),
            Worker(client, task_queue=provider_task_queue(main, provider_prefix), activities=[acts.run_action],
                   max_concurrent_activities=200),
        ):
            yield acts
    finally:
        await acts.aclose()
