"""The relay: feeds pending inbox rows to Temporal at its own pace.

Each round leases a batch of due ``pending`` rows, the orgs taking turns (``inbox.claim``: one org's flood
does not hold up the others' events; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and a conditional lease update
everywhere, so several API processes never relay a row twice) and maps each with its provider's
``WebhookScheme`` (``connectors.events``):

- nothing to do (the mapping ignores it, or it touches no opportunity, asks for no follow-up and no
  current rule listens to its domain events) → the row is finished as ``ignored`` without a workflow;
- otherwise → ``WebhookEventWorkflow`` is started with id ``webhook/{provider}/{connection}/{event}``
  (``USE_EXISTING`` on conflict, ``ALLOW_DUPLICATE_FAILED_ONLY`` on reuse: Temporal deduplicates
  too) and the row becomes ``relayed``; the workflow marks it ``done``.

Follow-ups are provider work the workflow does before signalling, decided here by the scheme from the
mapped event (``WebhookScheme.follow_up``; Graph's are described in connectors/sharepoint.py). The workflow
gets the connection's webhook URL (``HUB_PUBLIC_URL`` + ``/webhooks/{provider}/{connection}``) to
(re)subscribe with.

If Temporal cannot be reached the leased rows are released and wait (with a growing back-off);
none is lost and none runs twice. Housekeeping re-checks ``relayed`` rows whose workflow ended
without finishing them (failed, terminated) and purges finished rows past the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.connector_types import org_priority
from activities.rule_runs import current_rules
from activities.rule_types import approval_target
from activities.webhook_types import MappedEvent, WebhookEventInput
from connectors.events import MalformedEvent, Mapped, map_stored
from hub.runtime import Hub, TemporalUnavailable
from hub.store import inbox
from hub.store.base import utcnow
from hub.store.inbox import WebhookEvent
from webhooks import metrics
from webhooks.router import app_intake
from workflows.webhook_event import WebhookEventWorkflow, workflow_id

log = logging.getLogger("hub.webhooks.relay")

UNAVAILABLE = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)
RULES_TTL = 5.0
PURGE_EVERY = 3600.0


class _Unavailable(Exception):
    """Temporal did not answer; the row waits."""


@dataclass
class _Work:
    row: WebhookEvent
    events: list[MappedEvent]


class Relay:
    """Moves inbox rows to Temporal; ``run()`` loops until ``stop()``, ``run_once()`` does one round."""

    def __init__(
        self,
        hub: Hub,
        *,
        task_queue: str | None = None,
        batch: int = 100,
        concurrency: int = 16,
        lease: timedelta = timedelta(seconds=60),
        check_after: timedelta = timedelta(minutes=10),
        idle: float = 1.0,
        housekeeping_every: float = 15.0,
        rpc_timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        self.hub = hub
        self.owner = f"relay-{secrets.token_hex(6)}"
        self.task_queue = task_queue or hub.settings.task_queue
        self.batch, self.lease, self.check_after, self.idle = batch, lease, check_after, idle
        self.rpc_timeout = rpc_timeout
        self.housekeeping_every = housekeeping_every
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._backoff = 0.0
        self._last_housekeeping = 0.0
        self._last_purge = 0.0
        self._rules: dict[str, tuple[float, frozenset[str]]] = {}

    def wake(self) -> None:
        """New rows are waiting: start the next round now."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current round and return from ``run()``."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until stopped; errors of one round are logged and the next round follows."""
        while not self._stop.is_set():
            try:
                handled = await self.run_once()
            except Exception:  # the relay must outlive any one bad round
                log.exception("webhook relay round failed")
                handled = 0
                self._backoff = min(max(self._backoff * 2, 1.0), 10.0)
            if handled and not self._backoff:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._backoff or self.idle)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """One round: housekeeping when due, then one leased batch. Returns the rows handled."""
        if time.monotonic() - self._last_housekeeping >= self.housekeeping_every:
            await self.housekeeping()
        async with self.hub.db.session() as session:
            rows = await inbox.claim(session, self.owner, self.batch, self.lease)
        if not rows:
            return 0
        work, ignored, broken = [], [], []
        for row in rows:
            try:
                scheme, mapped = map_stored(row.provider, row.event_type, row.body, row.content_type)
            except MalformedEvent as exc:
                broken.append((row, f"cannot map the event: {exc}"))
                continue
            events = [MappedEvent(type=e.type, opportunity_id=e.opportunity_id, data=e.data,
                                  follow_up=scheme.follow_up(e)) for e in mapped.events]
            if await self._needs_workflow(row.org_id, events):
                work.append(_Work(row, events))
            else:
                ignored.append((row, mapped))
        if ignored or broken:
            await self._finish_without_workflow(ignored, broken)
        if work:
            await self._start(work)
        return len(rows)

    async def drain(self, timeout: float = 60.0) -> None:
        """Relay until no row is due (tests, CLI); raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while await self.run_once():
            if time.monotonic() > deadline:
                raise TimeoutError("the inbox did not drain in time")

    # ---------------------------------------------------------------- decisions

    async def _rule_triggers(self, org_id: str) -> frozenset[str]:
        cached = self._rules.get(org_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < RULES_TTL:
            return cached[1]
        async with self.hub.db.session() as session:
            triggers = (await current_rules(session, org_id)).triggers  # both sides of a rollout: either may run
        self._rules[org_id] = (now, triggers)
        return triggers

    async def _needs_workflow(self, org_id: str, events: list[MappedEvent]) -> bool:
        if not events:
            return False
        if any(e.opportunity_id or e.follow_up or approval_target(e.data) for e in events):
            return True
        return bool({e.type for e in events} & await self._rule_triggers(org_id))

    async def _finish_without_workflow(
        self, ignored: list[tuple[WebhookEvent, Mapped]], broken: list[tuple[WebhookEvent, str]]
    ) -> None:
        async with self.hub.db.session() as session:
            for row, mapped in ignored:
                types = [e.type for e in mapped.events]
                reason = mapped.ignored or f"no opportunity and no rule listens to {', '.join(types)}"
                await inbox.finish(session, row.id, "ignored", {"reason": reason}, domain_types=types,
                                   generation=row.generation)
            for row, error in broken:
                await inbox.record_failure(
                    session, row.id, error, row.generation, self.hub.settings.webhook_max_attempts
                )
        for row, _ in ignored:
            self._relayed(row, "ignored")

    def _relayed(self, row: WebhookEvent, outcome: str) -> None:
        metrics.RELAYED.labels(row.provider, outcome).inc()
        metrics.RELAY_LAG.observe(max(0.0, (utcnow() - row.received_at).total_seconds()))

    # ---------------------------------------------------------------- Temporal

    async def _client(self) -> Client:
        try:
            return await self.hub.temporal()
        except TemporalUnavailable as exc:
            raise _Unavailable(str(exc)) from exc

    async def _start(self, work: list[_Work]) -> None:
        try:
            client = await self._client()
        except _Unavailable as exc:
            await self._wait_for_temporal([w.row for w in work], exc)
            return
        if self._backoff:  # Temporal was unreachable last round: one cheap probe before a batch of starts
            try:
                await client.service_client.check_health(timeout=self.rpc_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure means "still down"
                await self._wait_for_temporal([w.row for w in work], exc)
                return
        down = asyncio.Event()  # the first "unavailable" spares the rest of the batch their timeouts
        results = await asyncio.gather(*(self._start_one(client, w, down) for w in work), return_exceptions=True)
        started, waiting, failed = [], [], []
        unavailable: _Unavailable | None = None
        for w, result in zip(work, results, strict=True):
            if isinstance(result, _Unavailable):
                waiting.append(w.row)
                unavailable = result
            elif isinstance(result, BaseException):
                failed.append((w.row, f"could not start the workflow: {result}"))
            else:
                started.append((w, result))
        async with self.hub.db.session() as session:
            for w, wid in started:
                await inbox.mark_relayed(
                    session, w.row.id, self.owner, wid, [e.type for e in w.events], self.check_after
                )
            for row, error in failed:
                await inbox.record_failure(
                    session, row.id, error, row.generation, self.hub.settings.webhook_max_attempts
                )
        for w, _ in started:
            self._relayed(w.row, "workflow")
        if waiting:
            await self._wait_for_temporal(waiting, unavailable)
        else:
            self._backoff = 0.0

    async def _start_one(self, client: Client, w: _Work, down: asyncio.Event) -> str:
        row = w.row
        wid = workflow_id(row.provider, row.connection_id, row.event_id, row.generation)
        payload = WebhookEventInput(
            inbox_id=row.id, generation=row.generation, org_id=row.org_id, provider=row.provider,
            connection_id=row.connection_id, event_id=row.event_id, event_type=row.event_type, events=w.events,
            webhook_url=self.hub.settings.webhook_url(row.provider, row.connection_id),
        )  # fmt: skip
        async with self._limit:
            if down.is_set():
                raise _Unavailable("Temporal did not answer another start of this batch")
            try:
                await client.start_workflow(
                    WebhookEventWorkflow.run, payload, id=wid, task_queue=self.task_queue,
                    priority=org_priority(row.org_id), id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    rpc_timeout=self.rpc_timeout,
                )  # fmt: skip
            except WorkflowAlreadyStartedError:
                pass  # this generation already ran to completion: Temporal deduplicated it
            except RPCError as exc:
                if exc.status in UNAVAILABLE:
                    down.set()
                    raise _Unavailable(str(exc)) from exc
                raise
        return wid

    async def _wait_for_temporal(self, rows: list[WebhookEvent], exc: BaseException | None) -> None:
        self._backoff = min(max(self._backoff * 2, 1.0), 10.0)
        log.warning("Temporal unreachable (%s); %d inbox rows wait %.0f s", exc, len(rows), self._backoff)
        async with self.hub.db.session() as session:
            await inbox.release(session, [r.id for r in rows], self.owner, timedelta(seconds=self._backoff))

    # ---------------------------------------------------------------- housekeeping

    async def housekeeping(self) -> None:
        """Re-check relayed rows past their check-back time, purge old finished rows, export the lag."""
        self._last_housekeeping = time.monotonic()
        async with self.hub.db.session() as session:
            stuck = await inbox.claim_stuck(session, self.owner, self.batch, self.check_after)
            if self._last_housekeeping - self._last_purge >= PURGE_EVERY or not self._last_purge:
                self._last_purge = self._last_housekeeping
                await inbox.purge(session)
            oldest = await inbox.pending_lag(session)
        age = 0.0 if oldest is None else (utcnow() - oldest).total_seconds()
        metrics.OLDEST_PENDING.set(max(0.0, age))
        if stuck:
            await self._reconcile(stuck)

    async def _reconcile(self, rows: list[WebhookEvent]) -> None:
        try:
            client = await self._client()
        except _Unavailable:
            return  # their check-back lease was extended by claim_stuck
        completed: list[WebhookEvent] = []
        ended: list[tuple[WebhookEvent, str]] = []
        for row in rows:
            try:
                desc = await client.get_workflow_handle(row.workflow_id or "").describe(rpc_timeout=self.rpc_timeout)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    ended.append((row, f"workflow {row.workflow_id} not found"))
                continue  # otherwise Temporal is flaky: look again after the extended check-back time
            if desc.status == WorkflowExecutionStatus.COMPLETED:
                completed.append(row)
            elif desc.status != WorkflowExecutionStatus.RUNNING:
                ended.append((row, f"workflow {row.workflow_id} ended {desc.status.name if desc.status else '?'}"))
        async with self.hub.db.session() as session:
            for row in completed:
                await inbox.finish(session, row.id, "done", {"workflow_id": row.workflow_id, "note": "reconciled"},
                                   generation=row.generation)
            for row, error in ended:
                await inbox.record_failure(
                    session, row.id, error, row.generation, self.hub.settings.webhook_max_attempts
                )


@contextlib.asynccontextmanager
async def relay_running(app: FastAPI) -> AsyncIterator[Relay | None]:
    """Run a relay beside the API for the app's lifetime (unless ``HUB_WEBHOOK_RELAY=false``)."""
    hub: Hub = app.state.hub
    if not hub.settings.webhook_relay:
        yield None
        return
    relay = Relay(hub)
    box = app_intake(app)
    box.listeners.append(relay.wake)
    task = asyncio.create_task(relay.run(), name="webhook-relay")
    try:
        yield relay
    finally:
        relay.stop()
        box.listeners.remove(relay.wake)
        await asyncio.gather(task, return_exceptions=True)
