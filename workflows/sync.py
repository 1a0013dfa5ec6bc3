"""SyncWorkflow: one run of one (connection, model) sync, started by the sync's Temporal Schedule.

The run pages through the provider from the stored cursor. Each page is fetched by ``sync.fetch_page``
on the provider's rate-limited task queue (the same queue, hence the same request budget, as the
provider's actions), which stages the records in the database and returns a reference (records never
travel through Temporal histories), and stored by ``sync.store_page``, whose transaction upserts the
records, writes their change events to the inbox and moves the cursor past the page — the cursor never
moves ahead of what is stored. Fetching runs ahead of storing (each page's cursor is known as soon as the previous
page is fetched; at most ``FETCH_AHEAD`` pages wait to be stored), so the provider's budget is used back
to back even when a store is slow; pages are stored strictly in order, and a fetched page that was not
stored when a run fails is simply fetched again by the next run. A 429 is retried by the fetch activity after the provider's Retry-After; a crash (worker or
process) resumes from history; a run that fails for good leaves the stored cursor where the next run
starts. Long backfills continue-as-new between pages.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.connector_types import (
        CONNECTION_FAILED,
        NON_RETRYABLE_ERRORS,
        FailureInput,
        provider_task_queue,
    )
    from activities.sync_types import (
        ERR_SYNC_CONFLICT,
        ERR_UNKNOWN_MODEL,
        SYNC_BEGIN,
        SYNC_FAIL,
        SYNC_FETCH_PAGE,
        SYNC_FINISH,
        SYNC_STORE_PAGE,
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
        StoreResult,
        SyncInput,
        SyncSummary,
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
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
MAX_HISTORY_BYTES = 4 * 1024 * 1024  # continue-as-new well before Temporal's history limits
FETCH_AHEAD = 3  # pages fetched but not yet stored, at most (memory and history stay bounded)


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
            begun: BeginResult = await self._bookkeeping(SYNC_BEGIN, BeginInput(target=target, run_id=run_id),
                                                         BeginResult)
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

        fetched: list[PageRef] = []  # fetched (staged), not yet stored, in page order
        fetch_failure: list[ActivityError] = []
        fetching = True

        async def fetch_ahead(cursor: str | None) -> None:
            """Fetch pages back to back (at most FETCH_AHEAD waiting to be stored) until the run is complete
            or this execution has fetched its share."""
            nonlocal fetching
            try:
                for executed in range(1, inp.pages_per_execution + 1):
                    await workflow.wait_condition(lambda: len(fetched) < FETCH_AHEAD)
                    page = await workflow.execute_activity(
                        SYNC_FETCH_PAGE,
                        FetchInput(target=target, run_id=run.run_id, cursor=cursor, page_size=page_size),
                        task_queue=queue, result_type=PageRef, start_to_close_timeout=timedelta(minutes=2),
                        schedule_to_close_timeout=timedelta(minutes=30), retry_policy=FETCH_RETRY,
                    )
                    fetched.append(page)
                    if page.done or executed == inp.pages_per_execution or self._history_full():
                        return
                    cursor = page.next_cursor
            except ActivityError as err:
                fetch_failure.append(err)
            finally:
                fetching = False

        fetcher = asyncio.create_task(fetch_ahead(run.cursor))
        complete = False
        try:
            while True:
                await workflow.wait_condition(lambda: bool(fetched) or not fetching)
                if not fetched:
                    break
                page = fetched[0]
                stored = await workflow.execute_activity(
                    SYNC_STORE_PAGE,
                    StoreInput(target=target, run_id=run.run_id, page_no=run.pages + 1, cursor=run.cursor,
                               page=page, quiet=run.quiet),
                    result_type=StoreResult, start_to_close_timeout=timedelta(minutes=2), retry_policy=STORE_RETRY,
                )
                fetched.pop(0)
                complete = page.done
                run = run.model_copy(update={
                    "cursor": page.next_cursor, "pages": run.pages + 1, "records": run.records + page.records,
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
        await self._bookkeeping(SYNC_FINISH, FinishInput(target=target, run_id=run.run_id), dict)
        return SyncSummary(model=target.model, pages=run.pages, records=run.records, changed=run.changed,
                           events=run.events, status="completed")

    async def _failed(self, inp: SyncInput, run: RunState, err: ActivityError) -> None:
        """Record the failure; the run that makes the sync unhealthy raises ``connection.failed``."""
        target = inp.target
        result: FailResult = await self._bookkeeping(
            SYNC_FAIL, FailInput(target=target, run_id=run.run_id, error=_cause(err)), FailResult)
        if result.unhealthy:
            reason = f"sync {target.model} failed {result.consecutive_failures} times in a row: {_cause(err)}"
            await self._bookkeeping(
                CONNECTION_FAILED,
                FailureInput(org_id=target.org_id, connection_id=target.connection_id, reason=reason), dict)

    @staticmethod
    async def _bookkeeping(name: str, arg: object, result_type: type):  # noqa: ANN205
        return await workflow.execute_activity(
            name, arg, result_type=result_type, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
        )

    @staticmethod
    def _history_full() -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_size() > MAX_HISTORY_BYTES


def _cause(err: BaseException) -> str:
    """The innermost failure's message (the provider's words, not Temporal's wrapping)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err) or type(err).__name__
