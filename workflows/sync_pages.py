"""The SyncWorkflow's page-by-page fetch pipeline, for runs from before segments (patch ``sync-segments``):
kept unchanged so that their histories replay and runs in flight during a deploy finish.

Each page was fetched by its own ``sync.fetch_page`` activity, which staged it in the database, and stored by
``sync.store_page``; fetching ran ahead of storing. Before ``CHAINED_FETCH`` each fetch was scheduled once the
previous one returned; after it, the fetches of the next pages were scheduled while a page was being fetched
(CHAIN of them, or as many as the fetcher asked under ``CHAIN_AT_RATE``) and the pages waiting were stored in one
transaction. Today's ``sync.fetch_page`` fetches nothing for a chained fetch, so such a run fetches each of its
remaining pages from the cursor, one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.connector_types import (
        BULK_PRIORITY,
        NON_RETRYABLE_ERRORS,
        provider_priority,
        provider_task_queue,
    )
    from activities.sync import SyncActivities, SyncFetcher
    from activities.sync_types import (
        ERR_SYNC_CONFLICT,
        ERR_UNKNOWN_MODEL,
        FetchInput,
        PageRef,
        RunState,
        StoreInput,
        SyncInput,
    )

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
MAX_HISTORY_BYTES = 4 * 1024 * 1024  # continue-as-new well before Temporal's history limits
FETCH_AHEAD = 10  # pages being fetched or fetched but not yet stored, at most, with a chain of CHAIN fetches
CHAIN = 3  # fetches in flight: the page being requested and the next ones
SEQUENTIAL_AHEAD = 3  # fetched pages not yet stored, at most, in histories from before CHAINED_FETCH
CHAINED_FETCH = "sync-chained-fetch"  # patch: chained fetches, and pages stored together
CHAIN_AT_RATE = "sync-chain-at-rate"  # patch: as many fetches in flight as the fetcher asks (PageRef.chain)


async def run_pages(inp: SyncInput, run: RunState,
                    progress: Callable[[RunState], None]) -> tuple[RunState, bool]:
    """Page the run on from ``run`` (``progress`` told after each store): the run then, and whether it is
    complete. Raises the first fetch or store failure."""
    target = inp.target
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
        """Fetch pages in order, the next ``chain`` - 1 pages' fetches scheduled (chained) while a page is
        fetched, at most FETCH_AHEAD - CHAIN more pages waiting to be stored."""
        nonlocal fetching
        pending: list[tuple[workflow.ActivityHandle[PageRef], bool]] = []  # (fetch, chained), in page order
        scheduled = 0
        at_rate = workflow.patched(CHAIN_AT_RATE)
        chain = CHAIN

        def more() -> bool:
            return scheduled < inp.pages_per_execution and not _history_full()

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
                fetch.cancel()  # or of a failed run
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
                if page.done or executed == inp.pages_per_execution or _history_full():
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
            progress(run)
        if fetch_failure:
            raise fetch_failure[0]
    except ActivityError:
        fetcher.cancel()
        raise
    return run, complete


def _history_full() -> bool:
    info = workflow.info()
    return info.is_continue_as_new_suggested() or info.get_current_history_size() > MAX_HISTORY_BYTES


def _unneeded(fetch: asyncio.Task) -> None:
    """A cancelled fetch's outcome, read only so that asyncio does not report it as never retrieved."""
    if not fetch.cancelled():
        fetch.exception()
