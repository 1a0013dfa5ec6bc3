"""Sync activities: fetch and store a run's pages (records, change events, cursor), book runs.

``sync.fetch_segment`` runs on the provider's task queue with the connection's credentials, each request
exactly as an action's (drawn from the connection's budget as bulk work; 401 → one fresh token from the
ConnectionWorkflow and one re-run; 429 → the attempt fails and is retried after the provider's retry header;
other 4xx → not retryable). It stores every page it fetches in one transaction: upsert its records, write the
change events of new/changed records into the webhook inbox (the path webhooks take; unique on provider +
connection + event id, so a fact that also arrived by webhook stays one event) and move the cursor past it,
the page checked to have been fetched from the stored cursor. The others run on the main queue.
``sync.fetch_page`` and ``sync.store_page`` serve the runs from before segments: a page staged in
``sync_pages``, then stored; storing the same pages twice changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import ConnectionActivities, heartbeat_every
from activities.sync_types import (
    ERR_SYNC_CONFLICT,
    ERR_UNKNOWN_MODEL,
    FAILURES_BEFORE_UNHEALTHY,
    SEGMENT_HEARTBEAT,
    SYNC_BEGIN,
    SYNC_FAIL,
    SYNC_FETCH_PAGE,
    SYNC_FETCH_SEGMENT,
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
    SegmentInput,
    SegmentResult,
    StoreInput,
    StoreResult,
    SyncTarget,
)
from connectors.events import for_provider
from connectors.sync import ProviderEvent, SyncModelSpec, get_spec
from hub.flags import flag_enabled
from hub.runtime import Hub
from hub.store import inbox
from hub.store import sync as store
from hub.store.connections import Connection

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
    scheme = for_provider(provider)
    return scheme is not None and bool(scheme.map(event.type, body, "application/json").events)


PageSource = Callable[[SyncTarget, str | None, int], Awaitable[PageData]]  # (sync, cursor, page size) → page


class SyncFetcher:
    """The sync's provider requests, on every provider's task queue: each exactly like an action's — the same
    connection context, budget and failure mapping as ``connector.run_action`` (shared ``connections``).
    ``source`` stands in for the provider request (tests)."""

    def __init__(self, connections: ConnectionActivities, source: PageSource | None = None) -> None:
        self.connections = connections
        self.source = source or self.request

    def provider_queue(self) -> list:
        """Activities of the provider queues."""
        return [self.fetch_segment, self.fetch_page]

    @activity.defn(name=SYNC_FETCH_SEGMENT)
    async def fetch_segment(self, inp: SegmentInput) -> SegmentResult:
        """Fetch the run's pages from its stored cursor up to page ``last_page`` (or the provider's last), each
        request drawn from the connection's budget while the page before it is stored, and heartbeat the stored
        cursor after each page and while waiting. A retry (after a 429, a worker crash) resumes from the stored
        cursor, which moves in the transaction that stores the page (a heartbeat can lag it): nothing is stored
        twice, and no page is requested again once stored."""
        hub, t, spec = self.connections.hub, inp.target, _spec(inp.target.model)
        async with hub.db.session() as session:
            state = await store.get_state(session, t.connection_id, t.model)
        if state is None or state.run_id != inp.run_id or state.run_finished_at is not None:
            raise ApplicationError(f"run {inp.run_id} of {t.model} is not the sync's current run",
                                   type=ERR_SYNC_CONFLICT, non_retryable=True)
        beat = activity.info().heartbeat_details  # an earlier attempt's last heartbeat, if any
        if beat and (last := SegmentResult.model_validate(beat[0])).done and last.pages == state.run_pages:
            return last  # that attempt stored the run's last page, and ended before it could return
        result = _segment_result(state, done=False)
        page_no, cursor = state.run_pages + 1, state.cursor
        fetch = asyncio.ensure_future(self.source(t, cursor, inp.page_size)) if page_no <= inp.last_page else None
        beats = asyncio.create_task(heartbeat_every(SEGMENT_HEARTBEAT.total_seconds() / 4,
                                                    lambda: (result.model_dump(),)))  # the last stored cursor
        try:
            while fetch is not None:
                page = await fetch
                more = not page.done and page_no < inp.last_page
                fetch = asyncio.ensure_future(self.source(t, page.next_cursor, inp.page_size)) if more else None
                async with hub.db.session() as session:
                    state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
                    stored = await _store(session, state, t, inp.run_id, inp.quiet, spec, page_no, cursor, page)
                _count(spec, t.model, 1, stored)
                _observe(state)
                result = _segment_result(state, done=page.done)
                activity.heartbeat(result.model_dump())
                page_no, cursor = page_no + 1, page.next_cursor
        finally:
            beats.cancel()
            if fetch is not None:  # the segment failed or was cancelled before the page after it was needed
                fetch.cancel()
                fetch.add_done_callback(_retrieved)
        return result

    @activity.defn(name=SYNC_FETCH_PAGE)
    async def fetch_page(self, inp: FetchInput) -> PageRef:
        """For runs from before segments: the page from ``cursor`` staged for ``sync.store_page``. A chained fetch
        fetches nothing (its run then fetches that page from the cursor)."""
        if inp.chained:
            return PageRef(page_id="", records=0)
        return await stage(self.connections.hub, inp, inp.cursor,
                           await self.source(inp.target, inp.cursor, inp.page_size))

    async def request(self, target: SyncTarget, cursor: str | None, page_size: int) -> PageData:
        """The provider's page from ``cursor``: one request with the connection's credentials."""
        spec = _spec(target.model)
        started = time.perf_counter()
        page, _ = await self.connections.call_provider(
            spec.provider, target.org_id, target.connection_id, "",
            lambda ctx: spec.fetch(ctx, cursor, page_size),
        )
        FETCH_SECONDS.labels(spec.provider.key, spec.name).observe(time.perf_counter() - started)
        return PageData(
            records=[
                RecordData(id=r.id, payload=r.payload, changed_at=r.changed_at,
                           event=ProviderEventData(id=r.event.id, type=r.event.type, body=r.event.body)
                           if r.event else None)
                for r in page.records
            ],
            next_cursor=page.next_cursor,
            done=page.done,
        )


def _segment_result(state: store.SyncState, done: bool) -> SegmentResult:
    return SegmentResult(cursor=state.cursor, pages=state.run_pages, records=state.run_records,
                         changed=state.run_changed, events=state.run_events, done=done)


def _retrieved(fetch: asyncio.Future) -> None:
    """A cancelled fetch's outcome, read only so that asyncio does not report it as never retrieved."""
    if not fetch.cancelled():
        fetch.exception()


async def stage(hub: Hub, inp: FetchInput, cursor: str | None, page: PageData) -> PageRef:
    """Keep a page fetched from ``cursor`` in ``sync_pages`` for ``sync.store_page``; the reference is what the
    fetch returns."""
    async with hub.db.session() as session:
        page_id = await store.stage_page(session, inp.target.connection_id, inp.target.model, inp.run_id,
                                         cursor, page.model_dump(mode="json"))
    return PageRef(page_id=page_id, records=len(page.records), next_cursor=page.next_cursor, done=page.done,
                   cursor=cursor)


class SyncActivities:
    """The sync bookkeeping of the main task queue: begin a run, finish or fail it (and store the pages of runs
    from before segments)."""

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
        """For runs from before segments: store the staged pages in order (records, change events, the cursor
        past them) in one transaction."""
        t = inp.target
        spec = _spec(t.model)
        refs = [inp.page, *inp.more]
        async with self.hub.db.session() as session:
            state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
            if store.page_applied(state, inp.run_id, inp.page_no + len(refs) - 1):
                return StoreResult(replayed=True)
            _ensure_follows(state, inp.run_id, inp.page_no, inp.cursor)
            results = []
            for page_no, ref in enumerate(refs, inp.page_no):
                staged = await store.take_page(session, ref.page_id, t.connection_id, t.model)
                if staged is None:
                    raise ApplicationError(f"staged page {ref.page_id} of {t.model} is gone", type=ERR_SYNC_CONFLICT,
                                           non_retryable=True)
                if staged.cursor != state.cursor:
                    raise ApplicationError(f"staged page {ref.page_id} of {t.model} was not fetched from the stored "
                                           "cursor", type=ERR_SYNC_CONFLICT, non_retryable=True)
                results.append(await _store(session, state, t, inp.run_id, inp.quiet, spec, page_no, staged.cursor,
                                            PageData.model_validate(staged.page)))
        total = StoreResult(**{n: sum(getattr(r, n) for r in results)
                               for n in ("new", "changed", "unchanged", "stale", "events")})
        _count(spec, t.model, len(refs), total)
        _observe(state)
        return total

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


def _ensure_follows(state: store.SyncState, run_id: str, page_no: int, cursor: str | None) -> None:
    """``ERR_SYNC_CONFLICT`` unless page ``page_no`` of ``run_id``, fetched from ``cursor``, is the next to store."""
    try:
        store.ensure_follows(state, run_id, page_no, cursor)
    except store.CursorConflict as exc:
        raise ApplicationError(str(exc), type=ERR_SYNC_CONFLICT, non_retryable=True) from None


async def _store(session: AsyncSession, state: store.SyncState, t: SyncTarget, run_id: str, quiet: bool,
                 spec: SyncModelSpec, page_no: int, cursor: str | None, page: PageData) -> StoreResult:
    """Page ``page_no`` of the run, fetched from ``cursor``: its records upserted, its change events in the inbox
    (unless ``quiet``), the cursor past it — in the caller's transaction, which holds the locked ``state``."""
    _ensure_follows(state, run_id, page_no, cursor)
    provider = spec.provider.key
    versions = [store.RecordVersion(r.id, r.payload, r.changed_at) for r in page.records]
    upserted = await store.upsert_records(session, t.org_id, t.connection_id, t.model, versions)
    written = 0
    if not quiet:
        new_events = []
        for event in change_events(spec, page, upserted.changes):
            body = json.dumps(event.body, separators=(",", ":"), ensure_ascii=False).encode()
            if _raises_domain_event(provider, event, body):
                new_events.append(inbox.NewEvent(
                    org_id=t.org_id, connection_id=t.connection_id, provider=provider,
                    event_id=event.id, event_type=event.type, headers={SOURCE_HEADER: f"sync:{t.model}"},
                    body=body, content_type="application/json"))
        written = len(await inbox.insert_new(session, new_events))
    store.advance_cursor(state, run_id, page_no, cursor, page.next_cursor,
                         seen=len(versions), changed=len(upserted.changes), events=written)
    return StoreResult(new=upserted.new, changed=upserted.changed, unchanged=upserted.unchanged,
                       stale=upserted.stale, events=written)


def _count(spec: SyncModelSpec, model: str, pages: int, stored: StoreResult) -> None:
    """Count stored pages, records by outcome and change events."""
    provider = spec.provider.key
    PAGES.labels(provider, model).inc(pages)
    for outcome in ("new", "changed", "unchanged", "stale"):
        if n := getattr(stored, outcome):
            RECORDS.labels(provider, model, outcome).inc(n)
    if stored.events:
        EVENTS.labels(provider, model).inc(stored.events)


async def _enabled(session: AsyncSession, t: SyncTarget) -> bool:
    """The org's OpenFeature flag ``sync.<model>`` — on unless the org turns it off (hub.flags' provider)."""
    return await flag_enabled(session, t.org_id, f"sync.{t.model}", default=True)
