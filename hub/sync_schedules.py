"""Temporal Schedules of the sync jobs: one per (connection, model), created with the connection.

Each schedule starts a ``SyncWorkflow`` every interval — the catalogue's default for the model, or the
connection's own (``config.sync_intervals = {"stripe.invoices": "15m"}``, or ``PATCH …/syncs/{model}``) —
with overlap policy SKIP (one run at a time) and a first run right away. ``:run``/``:pause``/``:resume``
of the API are the schedule's trigger/pause/unpause.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import TypeAdapter
from sqlalchemy import select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.sync_types import SYNC_WORKFLOW, SyncInput, SyncTarget, sync_schedule_id, sync_workflow_id
from connectors.catalogue import Duration, catalogue
from connectors.sync import declared_models
from hub.runtime import Hub, TemporalUnavailable
from hub.store.connections import Connection

log = logging.getLogger("hub.sync_schedules")

INTERVALS_KEY = "sync_intervals"  # connection config: {model: interval} overrides
MIN_INTERVAL = timedelta(minutes=1)
_DURATION = TypeAdapter(Duration)


def connection_models(connection: Connection) -> dict[str, timedelta]:
    """The sync models of a connection's provider and the interval each runs at for this connection."""
    entry = catalogue().providers.get(connection.provider)
    if entry is None:
        return {}
    overrides = (connection.config or {}).get(INTERVALS_KEY) or {}
    return {name: interval_of(overrides.get(name), model.interval) for name, model in declared_models(entry).items()}


def interval_of(value: object, default: timedelta) -> timedelta:
    """An interval override (``"15m"``, ``"2h"``, seconds) or the default; never below a minute."""
    interval = default if value in (None, "") else _DURATION.validate_python(value)
    return max(interval, MIN_INTERVAL)


def _schedule(connection: Connection, model: str, interval: timedelta, task_queue: str) -> Schedule:
    target = SyncTarget(org_id=connection.org_id, connection_id=connection.id, model=model)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SYNC_WORKFLOW, SyncInput(target=target), id=sync_workflow_id(connection.org_id, connection.id, model),
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)], jitter=min(interval / 10, timedelta(minutes=1))),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=max(interval, timedelta(minutes=1))),
        state=ScheduleState(note=f"sync {model} of connection {connection.id}"),
    )


async def ensure_schedules(
    client: Client, connection: Connection, task_queue: str, *, run_now: bool = False
) -> dict[str, bool]:
    """Create the schedule of each of the connection's sync models, or bring it up to date (interval, queue).

    Idempotent; an existing schedule keeps its paused state. A new schedule of an active connection, and
    every schedule when ``run_now`` is set (a connection that just became active), starts a run right away.
    Runs of a connection that is not active are skipped quietly, so schedules can exist from the start.
    Returns, by model, whether its schedule was created now.
    """
    active = connection.status == "active"
    created: dict[str, bool] = {}
    for model, interval in connection_models(connection).items():
        schedule_id = sync_schedule_id(connection.org_id, connection.id, model)
        wanted = _schedule(connection, model, interval, task_queue)
        try:
            await client.create_schedule(schedule_id, wanted, trigger_immediately=active)
            created[model] = True
        except ScheduleAlreadyRunningError:
            created[model] = False
            handle = client.get_schedule_handle(schedule_id)
            await _set_interval(handle, interval, task_queue)
            if run_now and active:
                await handle.trigger(overlap=ScheduleOverlapPolicy.BUFFER_ONE)
    return created


async def connection_changed(hub: Hub, connection: Connection) -> None:
    """From the connections API, best effort: a connection was created or authorised — ensure its schedules
    (running them now if it is active); a deleted (``disabled``) one loses them. With Temporal away this is
    logged and caught up by the next ``:run`` of a sync (or the demo bootstrap)."""
    try:
        client = await hub.temporal()
        if connection.status == "disabled":
            await remove_schedules(client, connection)
        else:
            await ensure_schedules(client, connection, hub.settings.task_queue, run_now=True)
    except (TemporalUnavailable, RPCError) as exc:
        log.warning("sync schedules of connection %s not updated: %s", connection.id, exc)


async def ensure_org_schedules(hub: Hub, org_id: str) -> int:
    """``ensure_schedules`` for every connection of an org (the demo org at start-up); returns how many."""
    async with hub.db.session() as session:
        connections = list(await session.scalars(
            select(Connection).where(Connection.org_id == org_id, Connection.status != "disabled")))
    client = await hub.temporal()
    for connection in connections:
        await ensure_schedules(client, connection, hub.settings.task_queue)
    return len(connections)


async def set_interval(client: Client, connection: Connection, model: str, task_queue: str) -> None:
    """Apply the connection's current interval for ``model`` to its schedule (created if missing)."""
    await ensure_schedules(client, connection, task_queue)
    interval = connection_models(connection)[model]
    await _set_interval(client.get_schedule_handle(sync_schedule_id(connection.org_id, connection.id, model)),
                        interval, task_queue)


async def _set_interval(handle: ScheduleHandle, interval: timedelta, task_queue: str) -> None:
    def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        schedule = current.description.schedule
        spec, action = schedule.spec, schedule.action
        same_queue = isinstance(action, ScheduleActionStartWorkflow) and action.task_queue == task_queue
        if [i.every for i in spec.intervals] == [interval] and same_queue:
            return None
        spec.intervals = [ScheduleIntervalSpec(every=interval)]
        spec.jitter = min(interval / 10, timedelta(minutes=1))
        schedule.policy.catchup_window = max(interval, timedelta(minutes=1))
        if isinstance(action, ScheduleActionStartWorkflow):
            action.task_queue = task_queue
        return ScheduleUpdate(schedule=schedule)

    await handle.update(update)


async def remove_schedules(client: Client, connection: Connection) -> None:
    """Delete the connection's sync schedules (a running sync finishes its run)."""
    for model in connection_models(connection):
        try:
            await client.get_schedule_handle(sync_schedule_id(connection.org_id, connection.id, model)).delete()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


@dataclass(frozen=True)
class ScheduleInfo:
    """What the API shows of a sync's schedule."""

    interval_seconds: int
    paused: bool
    next_run_at: datetime | None
    running: bool


async def describe(client: Client, org_id: str, connection_id: str, model: str) -> ScheduleInfo | None:
    """The schedule's interval, paused state, next run and whether a run is in progress; None if it has none."""
    try:
        desc = await client.get_schedule_handle(sync_schedule_id(org_id, connection_id, model)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    intervals = desc.schedule.spec.intervals
    upcoming = desc.info.next_action_times
    return ScheduleInfo(
        interval_seconds=int(intervals[0].every.total_seconds()) if intervals else 0,
        paused=desc.schedule.state.paused,
        next_run_at=None if desc.schedule.state.paused or not upcoming else upcoming[0],
        running=bool(desc.info.running_actions),
    )


async def trigger(client: Client, org_id: str, connection_id: str, model: str) -> None:
    """Run the sync now (after the current run if one is going: overlap BUFFER_ONE)."""
    await client.get_schedule_handle(sync_schedule_id(org_id, connection_id, model)).trigger(
        overlap=ScheduleOverlapPolicy.BUFFER_ONE)


async def pause(client: Client, org_id: str, connection_id: str, model: str, note: str) -> None:
    """Stop scheduled runs (a run in progress finishes)."""
    await client.get_schedule_handle(sync_schedule_id(org_id, connection_id, model)).pause(note=note)


async def unpause(client: Client, org_id: str, connection_id: str, model: str, note: str) -> None:
    """Resume scheduled runs."""
    await client.get_schedule_handle(sync_schedule_id(org_id, connection_id, model)).unpause(note=note)
