"""``/v1/connections/{id}/syncs``: each sync model's state and progress; run now, pause, resume, interval."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities import sync_schedules
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep, TemporalDep
from hub.problems import Problem
from hub.runtime import TemporalUnavailable
from hub.store import sync as store
from hub.store.connections import Connection
from hub.store.orgs import record_audit

router = APIRouter(prefix="/v1/connections", tags=["syncs"])


class RunProgress(BaseModel):
    """The current (or last) run of a sync."""

    id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    pages: int
    records: int
    changed: int
    events: int
    records_per_second: float


class SchedulePublic(BaseModel):
    """The sync's Temporal Schedule."""

    interval_seconds: int
    paused: bool
    next_run_at: datetime | None


class SyncPublic(BaseModel):
    """One sync model of a connection as the API shows it."""

    model: str
    state: str = Field(description="idle, running, paused or failing")
    cursor: str | None
    last_success_at: datetime | None
    records_seen: int
    records_changed: int
    records_stored: int
    consecutive_failures: int
    last_error: str | None
    last_error_at: datetime | None
    run: RunProgress
    schedule: SchedulePublic | None = Field(description="null if the schedule is missing or Temporal unreachable")


class SyncList(BaseModel):
    """Every sync model of a connection."""

    connection_id: str
    provider: str
    connection_status: str = Field(description="runs are skipped until the connection is active")
    syncs: list[SyncPublic]


class IntervalUpdate(BaseModel):
    """A new interval for one sync of one connection: ``"15m"``, ``"2h"``, or seconds."""

    interval: str | int


class SyncAction(BaseModel):
    """What a run/pause/resume request did."""

    connection_id: str
    model: str
    action: str


async def _connection(session: SessionDep, connection_id: str, org_id: str) -> Connection:
    conn = await session.get(Connection, connection_id)
    if conn is None or conn.org_id != org_id:
        raise Problem(404, f"connection {connection_id!r} not found")
    return conn


def _model(conn: Connection, model: str) -> None:
    if model not in sync_schedules.connection_models(conn):
        offered = ", ".join(sync_schedules.connection_models(conn)) or "none"
        raise Problem(404, f"{conn.provider} offers no sync model {model!r} (offered: {offered})")


def _public(model: str, state: store.SyncState | None, stored: int,
            schedule: sync_schedules.ScheduleInfo | None) -> SyncPublic:
    s = state or store.SyncState(model=model, state="idle", paused=False, records_seen=0, records_changed=0,
                                 run_pages=0, run_records=0, run_changed=0, run_events=0, run_rate=0.0,
                                 consecutive_failures=0)
    shown = s.display_state
    if schedule is not None and schedule.paused and shown == "idle":
        shown = "paused"
    return SyncPublic(
        model=model, state=shown, cursor=s.cursor, last_success_at=s.last_success_at,
        records_seen=s.records_seen, records_changed=s.records_changed, records_stored=stored,
        consecutive_failures=s.consecutive_failures, last_error=s.last_error, last_error_at=s.last_error_at,
        run=RunProgress(id=s.run_id, started_at=s.run_started_at, finished_at=s.run_finished_at, pages=s.run_pages,
                        records=s.run_records, changed=s.run_changed, events=s.run_events,
                        records_per_second=s.run_rate),
        schedule=None if schedule is None else SchedulePublic(
            interval_seconds=schedule.interval_seconds, paused=schedule.paused, next_run_at=schedule.next_run_at),
    )


async def _describe(client: Client | None, conn: Connection, model: str) -> sync_schedules.ScheduleInfo | None:
    if client is None:
        return None
    try:
        return await sync_schedules.describe(client, conn.org_id, conn.id, model)
    except RPCError:
        return None


@router.get("/{connection_id}/syncs")
async def list_syncs(connection_id: str, session: SessionDep, hub: HubDep, key: ReaderKey) -> SyncList:
    """For each sync model: state, last success, records seen/changed, cursor, current run, last error, schedule."""
    conn = await _connection(session, connection_id, key.org_id)
    states = {s.model: s for s in await store.list_states(session, conn.id)}
    counts = await store.count_records(session, conn.id)
    try:
        client: Client | None = await hub.temporal()
    except TemporalUnavailable:
        client = None
    syncs = [
        _public(model, states.get(model), counts.get(model, 0), await _describe(client, conn, model))
        for model in sync_schedules.connection_models(conn)
    ]
    return SyncList(connection_id=conn.id, provider=conn.provider, connection_status=conn.status, syncs=syncs)


async def _act(session: SessionDep, hub: HubDep, client: Client, key: AdminKey, connection_id: str, model: str,
               action: str) -> SyncAction:
    conn = await _connection(session, connection_id, key.org_id)
    _model(conn, model)
    if action == "run" and conn.status != "active":
        raise Problem(409, f"connection {conn.id} is {conn.status}: syncs run only on active connections")
    created = await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue)
    note = f"{action} by {key.key_id}"
    try:
        if action == "run":
            if not created[model]:  # a new schedule has just started its first run
                await sync_schedules.trigger(client, conn.org_id, conn.id, model)
        elif action == "pause":
            await sync_schedules.pause(client, conn.org_id, conn.id, model, note)
        else:
            await sync_schedules.unpause(client, conn.org_id, conn.id, model, note)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(409, f"sync {model} of {conn.id} has no schedule") from exc
        raise
    if action in ("pause", "resume"):
        state = await store.ensure_state(session, conn.org_id, conn.id, model)
        state.paused = action == "pause"
    await record_audit(session, conn.org_id, key.key_id, f"sync.{action}", f"connection/{conn.id}/syncs/{model}")
    return SyncAction(connection_id=conn.id, model=model, action=action)


@router.post("/{connection_id}/syncs/{model}:run", status_code=202)
async def run_sync(connection_id: str, model: str, session: SessionDep, hub: HubDep, client: TemporalDep,
                   key: AdminKey) -> SyncAction:
    """Run the sync now (queued behind a run in progress)."""
    return await _act(session, hub, client, key, connection_id, model, "run")


@router.post("/{connection_id}/syncs/{model}:pause")
async def pause_sync(connection_id: str, model: str, session: SessionDep, hub: HubDep, client: TemporalDep,
                     key: AdminKey) -> SyncAction:
    """Stop scheduled runs of the sync (a run in progress completes)."""
    return await _act(session, hub, client, key, connection_id, model, "pause")


@router.post("/{connection_id}/syncs/{model}:resume")
async def resume_sync(connection_id: str, model: str, session: SessionDep, hub: HubDep, client: TemporalDep,
                      key: AdminKey) -> SyncAction:
    """Resume scheduled runs of the sync."""
    return await _act(session, hub, client, key, connection_id, model, "resume")


@router.patch("/{connection_id}/syncs/{model}")
async def set_interval(connection_id: str, model: str, body: IntervalUpdate, session: SessionDep, hub: HubDep,
                       client: TemporalDep, key: AdminKey) -> SyncPublic:
    """Change how often this connection's sync runs (overrides the catalogue's default)."""
    conn = await _connection(session, connection_id, key.org_id)
    _model(conn, model)
    try:
        sync_schedules.interval_of(body.interval, sync_schedules.connection_models(conn)[model])
    except ValueError as exc:
        raise Problem(422, f"invalid interval {body.interval!r}: use e.g. '15m', '2h' or seconds") from exc
    conn.config = {**conn.config, sync_schedules.INTERVALS_KEY: {
        **(conn.config.get(sync_schedules.INTERVALS_KEY) or {}), model: body.interval}}
    await record_audit(session, conn.org_id, key.key_id, "sync.interval", f"connection/{conn.id}/syncs/{model}",
                       {"interval": body.interval})
    await sync_schedules.set_interval(client, conn, model, hub.settings.task_queue)
    state = await store.get_state(session, conn.id, model)
    counts = await store.count_records(session, conn.id)
    return _public(model, state, counts.get(model, 0), await _describe(client, conn, model))
