"""Names and payload types shared by the SyncWorkflow, the sync activities, the schedules and the API.

Pure (pydantic only): safe to import inside the workflow sandbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

# Workflow type and activity names.
SYNC_WORKFLOW = "SyncWorkflow"
SYNC_FETCH_SEGMENT = "sync.fetch_segment"  # on the provider's task queue
SYNC_FETCH_PAGE = "sync.fetch_page"  # on the provider's task queue; runs from before segments
SYNC_BEGIN = "sync.begin"
SYNC_STORE_PAGE = "sync.store_page"  # runs from before segments
SYNC_FINISH = "sync.finish"
SYNC_FAIL = "sync.fail"

# ApplicationError types of the sync activities.
ERR_SYNC_CONFLICT = "SyncCursorConflict"
ERR_UNKNOWN_MODEL = "UnknownSyncModel"

# A sync failing this many runs in a row marks its connection unhealthy (connection.failed).
FAILURES_BEFORE_UNHEALTHY = 3


def sync_workflow_id(org_id: str, connection_id: str, model: str) -> str:
    """``sync/{org}/{connection}/{model}`` (schedule-started runs get Temporal's time suffix)."""
    return f"sync/{org_id}/{connection_id}/{model}"


def sync_schedule_id(org_id: str, connection_id: str, model: str) -> str:
    """The Temporal Schedule of one (connection, model) sync."""
    return f"sync/{org_id}/{connection_id}/{model}"


class SyncTarget(BaseModel):
    """Which sync: a connection and one of its provider's models (full name, e.g. ``stripe.invoices``)."""

    org_id: str
    connection_id: str
    model: str

    @property
    def prefix(self) -> str:
        """The provider prefix of the model, which names the provider's task queue."""
        return self.model.split(".", 1)[0]


class RunState(BaseModel):
    """A run's position, carried across continue-as-new: everything up to ``cursor`` is stored."""

    run_id: str
    page_size: int
    cursor: str | None = None
    pages: int = 0
    records: int = 0
    changed: int = 0
    events: int = 0
    quiet: bool = False  # the first backfill: records stored, no change events raised


class SyncInput(BaseModel):
    """Input of the SyncWorkflow. ``run`` is None for a fresh run (started by its schedule)."""

    target: SyncTarget
    page_size: int | None = None  # None → the catalogue's page size
    pages_per_execution: int = 500  # continue-as-new after this many pages (or sooner, as Temporal suggests)
    run: RunState | None = None


class BeginInput(BaseModel):
    """Activity ``sync.begin``: mark run ``run_id`` started and say where it starts."""

    target: SyncTarget
    run_id: str


class BeginResult(BaseModel):
    """Where the run starts, with which page size — or ``skipped``: why there is nothing to run (the
    connection is not active, or the org's ``sync.<model>`` flag is off)."""

    cursor: str | None = None
    page_size: int = 100
    quiet: bool = False
    skipped: str | None = None


#: A segment heartbeats its stored cursor after every page, and every quarter of this while it waits (a budget
#: slot behind interactive work, the provider); silent this long (its worker died), it is retried from the cursor.
SEGMENT_HEARTBEAT = timedelta(seconds=30)


class SegmentInput(BaseModel):
    """Activity ``sync.fetch_segment``: fetch and store the pages of run ``run_id`` from its stored cursor, up to
    page ``last_page`` or the run's end, ``page_size`` records each; ``quiet``: raise no change events."""

    target: SyncTarget
    run_id: str
    last_page: int
    page_size: int
    quiet: bool = False


class SegmentResult(BaseModel):
    """The run after a segment: its stored cursor, pages, records, changed records, change events, and whether
    the provider has no more pages (``done``)."""

    cursor: str | None
    pages: int
    records: int
    changed: int
    events: int
    done: bool


class FetchInput(BaseModel):
    """Activity ``sync.fetch_page`` (runs from before segments): one provider request for page ``page_no`` of run
    ``run_id`` from ``cursor`` — or, a chained fetch, from where page ``page_no - 1`` ends (histories from before
    chained fetches have no ``page_no``)."""

    target: SyncTarget
    run_id: str
    cursor: str | None
    page_size: int
    page_no: int | None = None
    chained: bool = False


class ProviderEventData(BaseModel):
    """A provider event (webhook format) carried by a record."""

    id: str
    type: str
    body: dict[str, Any]


class RecordData(BaseModel):
    """One fetched record."""

    id: str
    payload: dict[str, Any]
    changed_at: datetime | None = None
    event: ProviderEventData | None = None


class PageData(BaseModel):
    """A fetched page, stored by the segment that fetched it (or staged in ``sync_pages`` by a run from before
    segments); never through Temporal: records stay out of histories."""

    records: list[RecordData] = Field(default_factory=list)
    next_cursor: str | None = None
    done: bool = True


class PageRef(BaseModel):
    """Result of ``sync.fetch_page``: the staged page's id, the cursor it was fetched from, its size and where the
    provider goes on. A chained fetch fetches nothing (``page_id`` empty): its run fetches that page from the
    cursor."""

    page_id: str
    records: int
    next_cursor: str | None = None
    done: bool = True
    cursor: str | None = None
    chain: int = 0  # fetches the run should keep in flight (recorded in histories; 0: the workflow's default)


class StoreInput(BaseModel):
    """Activity ``sync.store_page`` (runs from before segments): upsert staged page ``page`` as page ``page_no`` of the run, fetched from
    ``cursor``, then the pages ``more`` that follow it; the cursor moves past the last in the same transaction."""

    target: SyncTarget
    run_id: str
    page_no: int
    cursor: str | None
    page: PageRef
    more: list[PageRef] = Field(default_factory=list)
    quiet: bool = False


class StoreResult(BaseModel):
    """What storing pages did (``replayed``: they were already stored by an earlier attempt)."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    stale: int = 0
    events: int = 0
    replayed: bool = False


class FinishInput(BaseModel):
    """Activity ``sync.finish``."""

    target: SyncTarget
    run_id: str


class FailInput(BaseModel):
    """Activity ``sync.fail``: the run ended with ``error``."""

    target: SyncTarget
    run_id: str
    error: str


class FailResult(BaseModel):
    """After recording a failure: failures in a row, and whether the connection is now unhealthy."""

    consecutive_failures: int
    unhealthy: bool


class SyncSummary(BaseModel):
    """Result of a SyncWorkflow run."""

    model: str
    pages: int
    records: int
    changed: int
    events: int
    status: str  # "completed" | "skipped"
    reason: str | None = None
