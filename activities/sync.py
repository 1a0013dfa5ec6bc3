"""Sync activities: fetch a page from a provider, store it (records, change events, cursor), book runs.

``sync.fetch_page`` runs on the provider's rate-limited task queue with the connection's credentials,
exactly as an action does (401 → one fresh token from the ConnectionWorkflow and one re-run; 429 →
retried after the provider's retry header; other 4xx → not retryable). The others run on the main
queue. ``sync.store_page`` is one transaction: upsert the page's records, write the change events of
new/changed records into the webhook inbox (the path webhooks take; unique on provider + connection +
event id, so a fact that also arrived by webhook stays one event) and move the cursor past the page.
Storing the same page twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import time

from openfeature import api as openfeature
from openfeature.evaluation_context import EvaluationContext
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import ConnectionActivities
from activities.sync_types import (
    ERR_SYNC_CONFLICT,
    ERR_UNKNOWN_MODEL,
    FAILURES_BEFORE_UNHEALTHY,
    SYNC_BEGIN,
    SYNC_FAIL,
    SYNC_FETCH_PAGE,
    SYNC_FINISH,
    SYNC_STORE_PAGE,
    BeginInput,
    BeginResult,
    FailInput,
    FailResult,
    FetchInput,
    FinishInput,
    PageData,
    PageRef,
    ProviderEventData,
    RecordData,
    StoreInput,
    StoreResult,
    SyncTarget,
)
from connectors.events import map_event
from connectors.sync import ProviderEvent, SyncModelSpec, get_spec
from hub import flags  # noqa: F401 - installs the org-flags OpenFeature provider
from hub.runtime import Hub
from hub.store import inbox
from hub.store import sync as store
from hub.store.connections import Connection
from hub.store.orgs import Org

log = logging.getLogger("activities.sync")

SOURCE_HEADER = "x-fulqrun-source"  # on inbox rows written by a sync: "sync:<model>"
LABELS = ["provider", "model"]
PAGES = Counter("hub_sync_pages_total", "Sync pages stored", LABELS)
RECORDS = Counter("hub_sync_records_total", "Synced records by outcome (new, changed, unchanged, stale)",
                  [*LABELS, "outcome"])
EVENTS = Counter("hub_sync_change_events_total", "Change events written to the inbox by syncs", LABELS)
RUNS = Counter("hub_sync_runs_total", "Sync runs ended, by result (success, failure)", [*LABELS, "result"])
FETCH_SECONDS = Histogram("hub_sync_fetch_seconds", "Provider page fetch latency", LABELS)
STATE = Gauge("hub_sync_state", "1 for the sync's current state (idle, running, failing)",
              ["connection", "model", "state"])
RUN_RECORDS = Gauge("hub_sync_run_records", "Records fetched by the sync's current or last run", ["connection", "model"])
RUN_RATE = Gauge("hub_sync_run_records_per_second", "Records/s of the sync's current or last run",
                 ["connection", "model"])
LAST_SUCCESS = Gauge("hub_sync_last_success_timestamp_seconds", "When the sync last completed a run",
                     ["connection", "model"])
FAILURES = Gauge("hub_sync_consecutive_failures", "Failed runs in a row", ["connection", "model"])


def _observe(state: store.SyncState) -> None:
    """Export one sync's state as gauges."""
    key = (state.connection_id, state.model)
    for name in store.STATES:
        STATE.labels(*key, name).set(1 if state.state == name else 0)
    RUN_RECORDS.labels(*key).set(state.run_records)
    RUN_RATE.labels(*key).set(state.run_rate)
    FAILURES.labels(*key).set(state.consecutive_failures)
    if state.last_success_at is not None:
        LAST_SUCCESS.labels(*key).set(state.last_success_at.timestamp())


def _spec(model: str) -> SyncModelSpec:
    try:
        return get_spec(model)
    except KeyError as exc:
        raise ApplicationError(str(exc), type=ERR_UNKNOWN_MODEL, non_retryable=True) from None


def change_events(spec: SyncModelSpec, page: PageData, changes: list[store.Change]) -> list[ProviderEvent]:
    """The provider events a stored page raises: events the provider attached to its records (always —
    the inbox keeps one per event id) and events derived from records that are new or changed."""
    out: dict[str, ProviderEvent] = {}
    for record in page.records:
        if record.event is not None:
            out.setdefault(record.event.id, ProviderEvent(record.event.id, record.event.type, record.event.body))
    if spec.events is not None:
        for change in changes:
            for event in spec.events(change.payload, change.previous):
                out.setdefault(event.id, event)
    return list(out.values())


def _raises_domain_event(provider: str, event: ProviderEvent, body: bytes) -> bool:
    mapped = map_event(provider, event.type, body, "application/json")
    return bool(mapped.events)


class SyncFetcher:
    """``sync.fetch_page``, on every provider's task queue: a provider call exactly like an action's — the
    same connection context, pacing and failure mapping as ``connector.run_action`` (shared ``connections``)."""

    def __init__(self, connections: ConnectionActivities) -> None:
        self.connections = connections

    @activity.defn(name=SYNC_FETCH_PAGE)
    async def fetch_page(self, inp: FetchInput) -> PageRef:
        """One provider request from ``inp.cursor`` with the connection's credentials; the page is staged."""
        spec = _spec(inp.target.model)
        started = time.perf_counter()
        page, _ = await self.connections.call_provider(
            spec.provider, inp.target.org_id, inp.target.connection_id, "",
            lambda ctx: spec.fetch(ctx, inp.cursor, inp.page_size),
        )
        FETCH_SECONDS.labels(spec.provider.key, spec.name).observe(time.perf_counter() - started)
        data = PageData(
            records=[
                RecordData(id=r.id, payload=r.payload, changed_at=r.changed_at,
                           event=ProviderEventData(id=r.event.id, type=r.event.type, body=r.event.body)
                           if r.event else None)
                for r in page.records
            ],
            next_cursor=page.next_cursor,
            done=page.done,
        )
        return await stage(self.connections.hub, inp, data)


async def stage(hub: Hub, inp: FetchInput, page: PageData) -> PageRef:
    """Keep a fetched page in ``sync_pages`` for ``sync.store_page``; the reference is what the fetch returns."""
    async with hub.db.session() as session:
        page_id = await store.stage_page(session, inp.target.connection_id, inp.target.model, inp.run_id,
                                         inp.cursor, page.model_dump(mode="json"))
    return PageRef(page_id=page_id, records=len(page.records), next_cursor=page.next_cursor, done=page.done)


class SyncActivities:
    """The sync bookkeeping of the main task queue: begin a run, store a page, finish or fail a run."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def main_queue(self) -> list:
        """Activities of the main task queue."""
        return [self.begin, self.store_page, self.finish, self.fail]

    # --- main queue --------------------------------------------------------------------------------
    @activity.defn(name=SYNC_BEGIN)
    async def begin(self, inp: BeginInput) -> BeginResult:
        """Start run ``run_id`` (idempotent): where it starts, the page size, whether it is the quiet backfill;
        or why it is skipped (connection not active — scheduled runs wait for it quietly —, flag off)."""
        t = inp.target
        spec = _spec(t.model)
        async with self.hub.db.session() as session:
            conn = await session.get(Connection, t.connection_id)
            if conn is None or conn.org_id != t.org_id or conn.status != "active":
                return BeginResult(skipped=f"connection {t.connection_id} is {conn.status if conn else 'gone'}")
            if not await _enabled(session, t):
                return BeginResult(skipped=f"the org's flag sync.{t.model} is off")
            state = await store.begin_run(session, t.org_id, t.connection_id, t.model, inp.run_id)
            await store.drop_pages(session, t.connection_id, t.model, exclude_run=inp.run_id)  # left by a crash
            result = BeginResult(cursor=state.cursor, page_size=spec.settings.page_size,
                                 quiet=state.last_success_at is None)
        _observe(state)
        return result

    @activity.defn(name=SYNC_STORE_PAGE)
    async def store_page(self, inp: StoreInput) -> StoreResult:
        """Upsert one page, write its change events to the inbox and move the cursor, in one transaction."""
        t = inp.target
        spec = _spec(t.model)
        provider = spec.provider.key
        async with self.hub.db.session() as session:
            state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
            if store.page_applied(state, inp.run_id, inp.page_no):
                return StoreResult(replayed=True)
            try:
                store.ensure_follows(state, inp.run_id, inp.page_no, inp.cursor)
            except store.CursorConflict as exc:
                raise ApplicationError(str(exc), type=ERR_SYNC_CONFLICT, non_retryable=True) from None
            staged = await store.take_page(session, inp.page.page_id, t.connection_id, t.model)
            if staged is None:
                raise ApplicationError(f"staged page {inp.page.page_id} of {t.model} is gone", type=ERR_SYNC_CONFLICT,
                                       non_retryable=True)
            page = PageData.model_validate(staged.page)
            versions = [store.RecordVersion(r.id, r.payload, r.changed_at) for r in page.records]
            upserted = await store.upsert_records(session, t.org_id, t.connection_id, t.model, versions)
            written = 0
            if not inp.quiet:
                new_events = []
                for event in change_events(spec, page, upserted.changes):
                    body = json.dumps(event.body, separators=(",", ":"), ensure_ascii=False).encode()
                    if _raises_domain_event(provider, event, body):
                        new_events.append(inbox.NewEvent(
                            org_id=t.org_id, connection_id=t.connection_id, provider=provider,
                            event_id=event.id, event_type=event.type, headers={SOURCE_HEADER: f"sync:{t.model}"},
                            body=body, content_type="application/json"))
                written = len(await inbox.insert_new(session, new_events))
            store.advance_cursor(state, inp.run_id, inp.page_no, inp.cursor, page.next_cursor,
                                 seen=len(versions), changed=len(upserted.changes), events=written)
        PAGES.labels(provider, t.model).inc()
        for outcome, n in (("new", upserted.new), ("changed", upserted.changed),
                           ("unchanged", upserted.unchanged), ("stale", upserted.stale)):
            if n:
                RECORDS.labels(provider, t.model, outcome).inc(n)
        if written:
            EVENTS.labels(provider, t.model).inc(written)
        _observe(state)
        return StoreResult(new=upserted.new, changed=upserted.changed, unchanged=upserted.unchanged,
                           stale=upserted.stale, events=written)

    @activity.defn(name=SYNC_FINISH)
    async def finish(self, inp: FinishInput) -> dict:
        """Record a completed run: idle, last success now, failures reset."""
        t = inp.target
        async with self.hub.db.session() as session:
            state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
            recorded = store.finish_run(state, inp.run_id)
            await store.drop_pages(session, t.connection_id, t.model, inp.run_id)
        if recorded:
            RUNS.labels(t.prefix, t.model, "success").inc()
        _observe(state)
        return {"recorded": recorded}

    @activity.defn(name=SYNC_FAIL)
    async def fail(self, inp: FailInput) -> FailResult:
        """Record a failed run; the failure that reaches the threshold makes the connection unhealthy."""
        t = inp.target
        async with self.hub.db.session() as session:
            state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
            recorded = store.fail_run(state, inp.run_id, inp.error)
            await store.drop_pages(session, t.connection_id, t.model, inp.run_id)  # fetched, never stored
        if recorded:
            RUNS.labels(t.prefix, t.model, "failure").inc()
            log.warning("sync %s of %s failed (%d in a row): %s", t.model, t.connection_id,
                        state.consecutive_failures, inp.error)
        _observe(state)
        return FailResult(consecutive_failures=state.consecutive_failures,
                          unhealthy=recorded and state.consecutive_failures == FAILURES_BEFORE_UNHEALTHY)


async def _enabled(session: AsyncSession, t: SyncTarget) -> bool:
    """The org's OpenFeature flag ``sync.<model>`` — on unless the org turns it off (hub.flags' provider)."""
    org = await session.get(Org, t.org_id)
    context = EvaluationContext(targeting_key=t.org_id, attributes={"flags": (org.flags if org else {}) or {}})
    return openfeature.get_client("fulqrun-hub").get_boolean_value(f"sync.{t.model}", True, context)
