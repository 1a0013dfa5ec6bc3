"""SyncWorkflow: one run of one (connection, model) sync, started by the sync's Temporal Schedule.

Each execution of the run is one *segment*: ``sync.fetch_segment``, on the provider's task queue as bulk work
of its connection, pages through the provider from the stored cursor — each request drawn from the
connection's budget while the page before it is stored (records upserted, change events written to the inbox
and the cursor moved past the page, in one transaction: the cursor never moves ahead of what is stored) —
and heartbeats the stored cursor. Records never travel through Temporal histories. A 429, a failed attempt or a
worker crash (the heartbeat stops) retries the segment, which resumes from the stored cursor; a run that fails
for good leaves the stored cursor where the next run starts. After ``pages_per_execution`` pages the run
continues-as-new with the next segment. Runs from before segments go on page by page (``sync_pages``).
"""

from __future__ import annotations

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
        SEGMENT_HEARTBEAT,
        SYNC_WORKFLOW,
        BeginInput,
        BeginResult,
        FailInput,
        FailResult,
        FinishInput,
        RunState,
        SegmentInput,
        SegmentResult,
        SyncInput,
        SyncSummary,
    )

from workflows.sync_pages import run_pages

A = TypeVar("A")
R = TypeVar("R")
SEGMENT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=12,
    non_retryable_error_types=[*NON_RETRYABLE_ERRORS, ERR_UNKNOWN_MODEL, ERR_SYNC_CONFLICT],
)
SEGMENT_ATTEMPT = timedelta(hours=1)  # one attempt at a segment, at most (pages_per_execution pages)
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
SEGMENTS = "sync-segments"  # patch: one sync.fetch_segment per execution (before: sync.fetch_page per page)


@workflow.defn(name=SYNC_WORKFLOW)
class SyncWorkflow:
    """Pages one provider model into ``synced_records``; the stored cursor only follows stored pages."""

    def __init__(self) -> None:
        self._run: RunState | None = None

    @workflow.query
    def progress(self) -> RunState | None:
        """The run as of its last segment: cursor, pages, records, changed records, change events (``sync_state``
        has it page by page)."""
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
        try:
            if workflow.patched(SEGMENTS):
                segment = await self._segment(inp, run)
                self._run = run.model_copy(update=segment.model_dump(exclude={"done"}))
                complete = segment.done
            else:
                self._run, complete = await run_pages(inp, run, self._progress)
        except ActivityError as err:
            await self._failed(inp, run, err)
            raise ApplicationError(f"sync {target.model} of {target.connection_id} failed: {_cause(err)}",
                                   type="SyncFailed", non_retryable=True) from err
        run = self._run
        if not complete:
            workflow.continue_as_new(inp.model_copy(update={"run": run}))
        await self._bookkeeping(SyncActivities.finish, FinishInput(target=target, run_id=run.run_id))
        return SyncSummary(model=target.model, pages=run.pages, records=run.records, changed=run.changed,
                           events=run.events, status="completed")

    @staticmethod
    async def _segment(inp: SyncInput, run: RunState) -> SegmentResult:
        """This execution's pages, fetched and stored on the provider's queue after its interactive actions."""
        target = inp.target
        return await workflow.execute_activity_method(
            SyncFetcher.fetch_segment,
            SegmentInput(target=target, run_id=run.run_id, last_page=run.pages + inp.pages_per_execution,
                         page_size=run.page_size, quiet=run.quiet),
            task_queue=provider_task_queue(workflow.info().task_queue, target.prefix),
            priority=provider_priority(target.org_id, target.connection_id, BULK_PRIORITY),
            start_to_close_timeout=SEGMENT_ATTEMPT, heartbeat_timeout=SEGMENT_HEARTBEAT, retry_policy=SEGMENT_RETRY,
        )

    def _progress(self, run: RunState) -> None:
        self._run = run

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


def _cause(err: BaseException) -> str:
    """The innermost failure's message (the provider's words, not Temporal's wrapping)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err) or type(err).__name__
