"""Sync activities: fetch a page from a provider, store it (records, change events, cursor), book runs.

``sync.fetch_page`` runs on the provider's rate-limited task queue with the connection's credentials,
exactly as an action does (401 → one fresh token from the ConnectionWorkflow and one re-run; 429 →
retried after the provider's retry header; other 4xx → not retryable); a chained fetch first waits for
the run's previous page to be fetched. The others run on the main queue. ``sync.store_page`` is one
transaction for one or more consecutive pages: upsert their records, write the change events of
new/changed records into the webhook inbox (the path webhooks take; unique on provider + connection +
event id, so a fact that also arrived by webhook stays one event) and move the cursor past them, each page
checked to have been fetched from where the one before it ends. Storing the same pages twice changes
nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import select
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
from connectors.events import for_provider
from connectors.sync import ProviderEvent, SyncModelSpec, get_spec
from hub.flags import flag_enabled
from hub.runtime import Hub
from hub.store import inbox
from hub.store import sync as store
from hub.store.connections import Connection
from hub.store.sync import SyncPage

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
CHAIN_POLL = 0.2  # seconds between looks in sync_pages for a predecessor another worker process fetches
ENDS_KEPT = 256  # fetched pages' ends kept for chained fetches in this process (each is taken within a page or so)
CHAIN_SECONDS = 0.5  # a run's fetches in flight cover this long at the provider's rate: from a fetch's end to the
# fetch the workflow schedules then running takes a workflow round trip (~0.1-0.4 s on a busy 2-core machine)
MAX_CHAIN = 25  # fetches in flight per run, at most (each holds an activity slot of the worker while it waits)


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


class PageEnd(NamedTuple):
    """Where a staged page ends: the cursor after it, and whether it completed the run."""

    next_cursor: str | None
    done: bool


PageSource = Callable[[FetchInput, str | None], Awaitable[PageData]]


class SyncFetcher:
    """``sync.fetch_page``, on every provider's task queue: a provider call exactly like an action's — the
    same connection context, pacing and failure mapping as ``connector.run_action`` (shared ``connections``).

    A chained fetch waits for the previous page — told as soon as it is fetched when this process fetched it,
    else found staged in ``sync_pages`` (another worker process fetched it) — and then makes its one request
    from where that page ends, so a run's requests follow each other at the provider's pace, not a workflow
    round trip apart. Each fetch tells the workflow how many fetches to keep in flight (``PageRef.chain``), so that
    the run's requests keep coming at the provider's rate. ``source`` stands in for the provider request (tests).
    """

    def __init__(self, connections: ConnectionActivities, source: PageSource | None = None) -> None:
        self.connections = connections
        self.source = source or self.request
        self._ends: dict[tuple[str, int], asyncio.Future[PageEnd]] = {}  # (run, page no) → fetched page's end
        self._fetching: set[tuple[str, int | None]] = set()  # (run, page no) of the fetches running here

    @activity.defn(name=SYNC_FETCH_PAGE)
    async def fetch_page(self, inp: FetchInput) -> PageRef:
        """One provider request (none when a chained fetch has nothing to follow); the page is staged."""
        self._fetching.add((inp.run_id, inp.page_no))
        try:
            cursor = inp.cursor
            if inp.chained:
                end = await self._end_of_previous(inp)
                if end is None or end.done:
                    if end is not None:  # past the end of the run: so is the next page
                        self._tell((inp.run_id, inp.page_no), end)
                    return PageRef(page_id="", records=0)
                cursor = end.next_cursor
            page = await self.source(inp, cursor)
            if inp.page_no is not None:  # the next page's fetch need not wait for this one to be staged
                self._tell((inp.run_id, inp.page_no), PageEnd(page.next_cursor, page.done))
            ref = await stage(self.connections.hub, inp, cursor, page)
            ref.chain = self.chain(inp.target.model)
            return ref
        finally:
            self._fetching.discard((inp.run_id, inp.page_no))

    def chain(self, model: str) -> int:
        """Fetches in flight that cover ``CHAIN_SECONDS`` at the rate this process gives the model's provider."""
        rate = self.connections.limit(_spec(model).provider).queue_per_second
        return min(MAX_CHAIN, math.ceil(rate * CHAIN_SECONDS))

    async def request(self, inp: FetchInput, cursor: str | None) -> PageData:
        """The provider's page from ``cursor``: one request with the connection's credentials."""
        spec = _spec(inp.target.model)
        started = time.perf_counter()
        page, _ = await self.connections.call_provider(
            spec.provider, inp.target.org_id, inp.target.connection_id, "",
            lambda ctx: spec.fetch(ctx, cursor, inp.page_size),
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

    def _tell(self, key: tuple[str, int], end: PageEnd) -> None:
        """Hand a fetched page's end to the chained fetch waiting for it here (or arriving soon)."""
        told = self._ends.get(key)
        if told is None or told.done():
            told = self._ends[key] = asyncio.get_running_loop().create_future()
            while len(self._ends) > ENDS_KEPT:  # ends nobody waits for: a run's last page, another process's fetch
                del self._ends[next(iter(self._ends))]
        told.set_result(end)

    async def _end_of_previous(self, inp: FetchInput) -> PageEnd | None:
        """The end of the run's previous page once it is fetched; None if it was stored before this fetch saw it,
        or the run is over (then the workflow fetches this page from the cursor, if it still needs it)."""
        key = (inp.run_id, (inp.page_no or 1) - 1)
        told = self._ends.get(key)
        if told is None:
            told = self._ends[key] = asyncio.get_running_loop().create_future()
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(told), CHAIN_POLL)
                except TimeoutError:
                    activity.heartbeat()  # so that the workflow's cancellation reaches us
                if key in self._fetching:  # it will tell us
                    continue
                async with self.connections.hub.db.session() as session:
                    state = await store.get_state(session, inp.target.connection_id, inp.target.model)
                    if (state is None or state.run_id != inp.run_id or state.run_finished_at is not None
                            or state.run_pages >= key[1]):
                        return None
                    found = await staged_end(session, state, key[1])
                if found is not None:
                    return found
        finally:
            if self._ends.get(key) is told:
                del self._ends[key]


async def stage(hub: Hub, inp: FetchInput, cursor: str | None, page: PageData) -> PageRef:
    """Keep a page fetched from ``cursor`` in ``sync_pages`` for ``sync.store_page``; the reference is what the
    fetch returns."""
    async with hub.db.session() as session:
        page_id = await store.stage_page(session, inp.target.connection_id, inp.target.model, inp.run_id,
                                         cursor, page.model_dump(mode="json"))
    return PageRef(page_id=page_id, records=len(page.records), next_cursor=page.next_cursor, done=page.done,
                   cursor=cursor)


async def staged_end(session: AsyncSession, state: store.SyncState, page_no: int) -> PageEnd | None:
    """The end of page ``page_no`` of the sync's current run, following its staged pages from the stored cursor
    (another process fetched them); None while it is not staged."""
    rows = await session.execute(
        select(SyncPage.cursor, SyncPage.page)
        .where(SyncPage.connection_id == state.connection_id, SyncPage.model == state.model,
               SyncPage.run_id == state.run_id)
        .order_by(SyncPage.created_at))
    ends = {cursor: PageEnd(page.get("next_cursor"), page.get("done", True)) for cursor, page in rows}
    end, cursor = None, state.cursor
    for _ in range(page_no - state.run_pages):
        end = ends.get(cursor)
        if end is None or end.done:
            return end
        cursor = end.next_cursor
    return end


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
        """Upsert the pages in order, write their change events to the inbox and move the cursor past them, in
        one transaction."""
        t = inp.target
        spec = _spec(t.model)
        refs = [inp.page, *inp.more]
        async with self.hub.db.session() as session:
            state = await store.lock_state(session, t.org_id, t.connection_id, t.model)
            if store.page_applied(state, inp.run_id, inp.page_no + len(refs) - 1):
                return StoreResult(replayed=True)
            try:
                store.ensure_follows(state, inp.run_id, inp.page_no, inp.cursor)
            except store.CursorConflict as exc:
                raise ApplicationError(str(exc), type=ERR_SYNC_CONFLICT, non_retryable=True) from None
            results = [await self._store(session, state, inp, spec, page_no, ref)
                       for page_no, ref in enumerate(refs, inp.page_no)]
        total = StoreResult(**{n: sum(getattr(r, n) for r in results)
                               for n in ("new", "changed", "unchanged", "stale", "events")})
        provider = spec.provider.key
        PAGES.labels(provider, t.model).inc(len(refs))
        for outcome in ("new", "changed", "unchanged", "stale"):
            if n := getattr(total, outcome):
                RECORDS.labels(provider, t.model, outcome).inc(n)
        if total.events:
            EVENTS.labels(provider, t.model).inc(total.events)
        _observe(state)
        return total

    @staticmethod
    async def _store(session: AsyncSession, state: store.SyncState, inp: StoreInput, spec: SyncModelSpec,
                     page_no: int, ref: PageRef) -> StoreResult:
        """Page ``page_no`` of the run: its records upserted, its change events in the inbox, the cursor past it."""
        t = inp.target
        provider = spec.provider.key
        staged = await store.take_page(session, ref.page_id, t.connection_id, t.model)
        if staged is None:
            raise ApplicationError(f"staged page {ref.page_id} of {t.model} is gone", type=ERR_SYNC_CONFLICT,
                                   non_retryable=True)
        if staged.cursor != state.cursor:
            raise ApplicationError(f"staged page {ref.page_id} of {t.model} was not fetched from the stored cursor",
                                   type=ERR_SYNC_CONFLICT, non_retryable=True)
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
        store.advance_cursor(state, inp.run_id, page_no, state.cursor, page.next_cursor,
                             seen=len(versions), changed=len(upserted.changes), events=written)
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
    return await flag_enabled(session, t.org_id, f"sync.{t.model}", default=True)
