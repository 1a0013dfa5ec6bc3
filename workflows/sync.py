"""SyncWorkflow: one run of one (connection, model) sync, started by the sync's Temporal Schedule.

The run pages through the provider from the stored cursor. Each page is fetched by ``sync.fetch_page``
on the provider's rate-limited task queue (the same queue, hence the same request budget, as the
provider's actions), which stages the records in the database and returns a reference (records never
travel through Temporal histories), and stored by ``sync.store_page``, whose transaction upserts the
records, writes their change events to the inbox and moves the cursor past the page — the cursor never
moves ahead of what is stored. Fetching runs ahead of storing, and the fetches of the next pages are
scheduled while a page is still being fetched: *chained* fetches, each waiting on its worker until the
page before it is fetched and then requesting the page after it, so a run's requests follow each other at
the provider's pace instead of one workflow round trip apart — still one request per activity, so the
task queue's rate limit counts every one. The fetcher says how many fetches to keep in flight: enough to
cover a workflow round trip at the provider's rate. At most ``FETCH_AHEAD`` pages (more at a fast
provider's rate) are being fetched or wait to be stored; pages are stored strictly in order (all those
waiting in one transaction), and a fetched page that was not stored when a run fails is simply fetched
again by the next run. A 429 is retried by the fetch activity after the provider's Retry-After; a crash
(worker or process) resumes from history; a run that fails for good leaves the stored cursor where the
next run starts. Long backfills continue-as-new between pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.connections import ConnectionActivities
    from activities.connector_types import (
        BULK_PRIORITY,
        NON_RETRYABLE_ERRORS,
        FailureInput,
        provider_priority,
        provider_task_queue,
    )
    from activities.sync import SyncActivities, SyncFetcher
    from activities.sync_types import (
        ERR_SYNC_CONFLICT,
        ERR_UNKNOWN_MODEL,
        SYNC_WORKFLOW,
        BeginInput,
        BeginResult,
        FailInput,
        FailResult,
        FetchInput,
        FinishInput,
        PageRef,
        RunState,
        StoreInput,
        SyncInput,
        SyncSummary,
    )

A = TypeVar("A")
R = TypeVar("R")
FETCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=12,
    non_retryable_error_types=[*NON_RETRYABLE_ERRORS, ERR_UNKNOWN_MODEL],
)
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=[ERR_SYNC_CONFLICT],
)
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
MAX_HISTORY_BYTES = 4 * 1024 * 1024  # continue-as-new well before Temporal's history limits
FETCH_AHEAD = 10  # pages being fetched or fetched but not yet stored, at most, with a chain of CHAIN fetches
CHAIN = 3  # fetches in flight: the page being requested and the next ones, waiting for it on their workers
SEQUENTIAL_AHEAD = 3  # fetched pages not yet stored, at most, in histories from before CHAINED_FETCH
CHAINED_FETCH = "sync-chained-fetch"  # patch: chained fetches, and pages stored together
CHAIN_AT_RATE = "sync-chain-at-rate"  # patch: as many fetches in flight as the fetcher asks (PageRef.chain)


@workflow.defn(name=SYNC_WORKFLOW)
class SyncWorkflow:
    """Pages one provider model into ``synced_records``; the stored cursor only follows stored pages."""

    def __init__(self) -> None:
        self._run: RunState | None = None

    @workflow.query
    def progress(self) -> RunState | None:
        """The run so far: cursor, pages, records, changed records, change events."""
        return self._run

    @workflow.run
    async def run(self, inp: SyncInput) -> SyncSummary:
        target = inp.target
        if inp.run is None:
            info = workflow.info()
            run_id = f"{info.workflow_id}@{info.run_id}"
            begun: BeginResult = await self._bookkeeping(SyncActivities.begin,
                                                         BeginInput(target=target, run_id=run_id))
            if begun.skipped:
                return SyncSummary(model=target.model, pages=0, records=0, changed=0, events=0, status="skipped",
                                   reason=begun.skipped)
            run = RunState(run_id=run_id, cursor=begun.cursor, quiet=begun.quiet,
                           page_size=inp.page_size or begun.page_size)
        else:
            run = inp.run
        self._run = run
        page_size = run.page_size
        queue = provider_task_queue(workflow.info().task_queue, target.prefix)
        bulk = provider_priority(target.org_id, target.connection_id, BULK_PRIORITY)  # after interactive actions

        fetched: list[PageRef] = []  # fetched (staged), not yet stored, in page order
        fetch_failure: list[ActivityError] = []
        fetching = True
        stored_before = run.pages

        def start_fetch(cursor: str | None, page_no: int | None = None,
                        chained: bool = False) -> workflow.ActivityHandle[PageRef]:
            return workflow.start_activity_method(
                SyncFetcher.fetch_page,
                FetchInput(target=target, run_id=run.run_id, cursor=cursor, page_size=page_size, page_no=page_no,
                           chained=chained),
                task_queue=queue, start_to_close_timeout=timedelta(minutes=2),
                schedule_to_close_timeout=timedelta(minutes=30), retry_policy=FETCH_RETRY, priority=bulk,
            )

        async def fetch_chained(cursor: str | None) -> None:
            """Fetch pages in order, the fetches of the next ``chain`` - 1 pages already scheduled (chained) while a
            page is fetched (CHAIN, or as many as the fetcher asks: enough to cover a workflow round trip at the
            provider's rate), at most FETCH_AHEAD - CHAIN more pages waiting to be stored, until the run is
            complete or this execution has scheduled its share."""
            nonlocal fetching
            pending: list[tuple[workflow.ActivityHandle[PageRef], bool]] = []  # (fetch, chained), in page order
            scheduled = 0
            at_rate = workflow.patched(CHAIN_AT_RATE)
            chain = CHAIN

            def more() -> bool:
                return scheduled < inp.pages_per_execution and not self._history_full()

            def room() -> bool:
                return more() and len(pending) < chain and len(fetched) + len(pending) < FETCH_AHEAD - CHAIN + chain

            try:
                while True:
                    while room():
                        scheduled += 1
                        follows = bool(pending)  # the first page in flight is fetched from `cursor`
                        pending.append((start_fetch(None if follows else cursor, stored_before + scheduled, follows),
                                        follows))
                    if not pending and not more():
                        return
                    await workflow.wait_condition(lambda: bool(pending) and pending[0][0].done() or room())
                    if not pending or not pending[0][0].done():
                        continue
                    fetch, follows = pending.pop(0)
                    page = await fetch
                    if follows and (not page.page_id or page.cursor != cursor):  # chained off another page
                        page = await start_fetch(cursor, stored_before + scheduled - len(pending))
                    fetched.append(page)
                    if page.done:
                        return
                    cursor = page.next_cursor
                    if at_rate:
                        chain = max(chain, page.chain)
            except ActivityError as err:
                fetch_failure.append(err)
            finally:
                for fetch, _ in pending:  # chained fetches past the end of the run (they would fetch nothing),
                    fetch.cancel()  # or of a failed run (they wait for a page that will not come)
                    fetch.add_done_callback(_unneeded)
                fetching = False

        async def fetch_ahead(cursor: str | None) -> None:
            """Histories from before CHAINED_FETCH: each page's fetch scheduled once the previous one returned."""
            nonlocal fetching
            try:
                for executed in range(1, inp.pages_per_execution + 1):
                    await workflow.wait_condition(lambda: len(fetched) < SEQUENTIAL_AHEAD)
                    page = await start_fetch(cursor)
                    fetched.append(page)
                    if page.done or executed == inp.pages_per_execution or self._history_full():
                        return
                    cursor = page.next_cursor
            except ActivityError as err:
                fetch_failure.append(err)
            finally:
                fetching = False

        chained = workflow.patched(CHAINED_FETCH)
        fetcher = asyncio.create_task(fetch_chained(run.cursor) if chained else fetch_ahead(run.cursor))
        complete = False
        try:
            while True:
                await workflow.wait_condition(lambda: bool(fetched) or not fetching)
                if not fetched:
                    break
                batch = fetched[:] if chained else fetched[:1]  # chained: every page waiting, in one transaction
                stored = await workflow.execute_activity_method(
                    SyncActivities.store_page,
                    StoreInput(target=target, run_id=run.run_id, page_no=run.pages + 1, cursor=run.cursor,
                               page=batch[0], more=batch[1:], quiet=run.quiet),
                    start_to_close_timeout=timedelta(minutes=2), retry_policy=STORE_RETRY,
                )
                del fetched[:len(batch)]
                complete = batch[-1].done
                run = run.model_copy(update={
                    "cursor": batch[-1].next_cursor, "pages": run.pages + len(batch),
                    "records": run.records + sum(page.records for page in batch),
                    "changed": run.changed + stored.new + stored.changed, "events": run.events + stored.events,
                })
                self._run = run
            if fetch_failure:
                raise fetch_failure[0]
        except ActivityError as err:
            fetcher.cancel()
            await self._failed(inp, run, err)
            raise ApplicationError(f"sync {target.model} of {target.connection_id} failed: {_cause(err)}",
                                   type="SyncFailed", non_retryable=True) from err
        if not complete:
            workflow.continue_as_new(inp.model_copy(update={"run": run}))
        await self._bookkeeping(SyncActivities.finish, FinishInput(target=target, run_id=run.run_id))
        return SyncSummary(model=target.model, pages=run.pages, records=run.records, changed=run.changed,
                           events=run.events, status="completed")

    async def _failed(self, inp: SyncInput, run: RunState, err: ActivityError) -> None:
        """Record the failure; the run that makes the sync unhealthy raises ``connection.failed``."""
        target = inp.target
        result: FailResult = await self._bookkeeping(
            SyncActivities.fail, FailInput(target=target, run_id=run.run_id, error=_cause(err)))
        if result.unhealthy:
            reason = f"sync {target.model} failed {result.consecutive_failures} times in a row: {_cause(err)}"
            await self._bookkeeping(
                ConnectionActivities.mark_failed,
                FailureInput(org_id=target.org_id, connection_id=target.connection_id, reason=reason))

    @staticmethod
    async def _bookkeeping(activity: Callable[[Any, A], Awaitable[R]], arg: A) -> R:
        return await workflow.execute_activity_method(
            activity, arg, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
        )

    @staticmethod
    def _history_full() -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_size() > MAX_HISTORY_BYTES


def _unneeded(fetch: asyncio.Task) -> None:
    """A cancelled fetch's outcome, read only so that asyncio does not report it as never retrieved."""
    if not fetch.cancelled():
        fetch.exception()


def _cause(err: BaseException) -> str:
    """The innermost failure's message (the provider's words, not Temporal's wrapping)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err) or type(err).__name__
