"""Temporal Schedules of the sync jobs: one per (connection, model), created with the connection.

Each schedule starts a ``SyncWorkflow`` every interval — the catalogue's default for the model, or the
connection's own (``config.sync_intervals = {"stripe.invoices": "15m"}``, or ``PATCH …/syncs/{model}``) —
with overlap policy SKIP (one run at a time) and a first run right away. ``:run``/``:pause``/``:resume``
of the API are the schedule's trigger/pause/unpause.

A connection whose provider offers ``sharepoint.create_subscription`` (Microsoft) also gets, when the hub has a
public URL (``HUB_PUBLIC_URL``; Graph cannot reach it otherwise), a schedule ``graph-subscription/{org}/{id}``
that starts a ``GraphSubscriptionWorkflow`` every 24 h and at once when the connection becomes active: it
creates, or renews, the connection's Graph change-notification subscription (``workflows.graph_subscription``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from pydantic import TypeAdapter
from sqlalchemy import select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
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

from activities.connector_types import org_priority
from activities.graph_types import (
    CREATE_SUBSCRIPTION,
    GRAPH_SUBSCRIPTION_WORKFLOW,
    UPKEEP_EVERY,
    GraphSubscriptionInput,
    graph_subscription_id,
)
from activities.sync_types import SYNC_WORKFLOW, SyncInput, SyncTarget, sync_schedule_id, sync_workflow_id
from connectors.catalogue import Duration, catalogue
from connectors.sync import declared_models
from hub.runtime import Hub, TemporalUnavailable
from hub.settings import Settings
from hub.store.connections import Connection
from hub.temporal import delete_schedule, upsert_schedule

log = logging.getLogger("activities.sync_schedules")

INTERVALS_KEY = "sync_intervals"  # connection config: {model: interval} overrides
MIN_INTERVAL = timedelta(minutes=1)
_DURATION = TypeAdapter(Duration)


def connection_models(connection: Connection) -> dict[str, timedelta]:
    """The sync models a connection is offered — its provider's, less those needing config it does not set — and
    the interval each runs at for this connection."""
    entry = catalogue().providers.get(connection.provider)
    if entry is None:
        return {}
    config = connection.config or {}
    overrides = config.get(INTERVALS_KEY) or {}
    return {name: interval_of(overrides.get(name), model.interval) for name, model in declared_models(entry).items()
            if all(config.get(key) for key in model.required_config)}


def interval_of(value: object, default: timedelta) -> timedelta:
    """An interval override (``"15m"``, ``"2h"``, seconds) or the default; never below a minute."""
    interval = default if value in (None, "") else _DURATION.validate_python(value)
    return max(interval, MIN_INTERVAL)


def _schedule(connection: Connection, model: str, interval: timedelta, task_queue: str) -> Schedule:
    target = SyncTarget(org_id=connection.org_id, connection_id=connection.id, model=model)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SYNC_WORKFLOW, SyncInput(target=target), id=sync_workflow_id(connection.org_id, connection.id, model),
            task_queue=task_queue, priority=org_priority(connection.org_id),  # the org's turn on the shared queue
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
    created = {}
    for model, interval in connection_models(connection).items():
        wanted = _schedule(connection, model, interval, task_queue)
        created[model] = await _ensure(client, sync_schedule_id(connection.org_id, connection.id, model), wanted,
                                       active=active, run_now=run_now, update=partial(_set_interval, wanted=wanted))
    return created


async def _ensure(
    client: Client, schedule_id: str, wanted: Schedule, *, active: bool, run_now: bool,
    update: Callable[[ScheduleHandle], Awaitable[None]],
) -> bool:
    """Create the schedule (a first run right away if ``active``) or bring the existing one up to date with
    ``update`` (and run it now if ``run_now`` and ``active``); True if it was created now."""
    handle, created = await upsert_schedule(client, schedule_id, wanted, trigger_immediately=active, update=update)
    if not created and run_now and active:
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
            await remove_graph_upkeep(client, connection)
        else:
            await ensure_schedules(client, connection, hub.settings.task_queue, run_now=True)
            await ensure_graph_upkeep(client, hub.settings, connection, run_now=True)
    except (TemporalUnavailable, RPCError) as exc:
        log.warning("schedules of connection %s not updated: %s", connection.id, exc)


async def ensure_org_schedules(hub: Hub, org_id: str) -> int:
    """``ensure_schedules`` (and the Graph subscription upkeep) for every connection of an org (the demo org at
    start-up); returns how many."""
    async with hub.db.session() as session:
        connections = list(await session.scalars(
            select(Connection).where(Connection.org_id == org_id, Connection.status != "disabled")))
    client = await hub.temporal()
    for connection in connections:
        await ensure_schedules(client, connection, hub.settings.task_queue)
        await ensure_graph_upkeep(client, hub.settings, connection)
    return len(connections)


async def set_interval(client: Client, connection: Connection, model: str, task_queue: str) -> None:
    """Apply the connection's current interval for ``model`` to its schedule (created if missing)."""
    await ensure_schedules(client, connection, task_queue)
    await _set_interval(client.get_schedule_handle(sync_schedule_id(connection.org_id, connection.id, model)),
                        _schedule(connection, model, connection_models(connection)[model], task_queue))


async def _set_interval(handle: ScheduleHandle, wanted: Schedule) -> None:
    """Bring the schedule's interval, and its action's queue and priority, to ``wanted``'s (the rest is kept)."""
    target = wanted.action
    assert isinstance(target, ScheduleActionStartWorkflow)

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        schedule = current.description.schedule
        spec, action = schedule.spec, schedule.action
        same_action = (isinstance(action, ScheduleActionStartWorkflow) and action.task_queue == target.task_queue
                       and action.priority == target.priority)  # fmt: skip
        if [i.every for i in spec.intervals] == [i.every for i in wanted.spec.intervals] and same_action:
            return None
        spec.intervals, spec.jitter = wanted.spec.intervals, wanted.spec.jitter
        schedule.policy.catchup_window = wanted.policy.catchup_window
        if isinstance(action, ScheduleActionStartWorkflow):  # (schedules made before they had a priority)
            action.task_queue, action.priority = target.task_queue, target.priority
        return ScheduleUpdate(schedule=schedule)

    await handle.update(update)


async def remove_schedules(client: Client, connection: Connection) -> None:
    """Delete the connection's sync schedules (a running sync finishes its run)."""
    for model in connection_models(connection):
        await delete_schedule(client, sync_schedule_id(connection.org_id, connection.id, model))


# --- the Graph subscription upkeep of a Microsoft connection ------------------------------------------------
def graph_notification_url(settings: Settings, connection: Connection) -> str | None:
    """Where Graph posts for this connection (``{HUB_PUBLIC_URL}/webhooks/{provider}/{id}``), if its provider
    subscribes to changes (``sharepoint.create_subscription``) and the hub has a public URL; else None."""
    entry = catalogue().providers.get(connection.provider)
    if entry is None or CREATE_SUBSCRIPTION not in entry.actions or not settings.public_url:
        return None
    return settings.webhook_url(connection.provider, connection.id)


def _graph_schedule(connection: Connection, notification_url: str, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            GRAPH_SUBSCRIPTION_WORKFLOW,
            GraphSubscriptionInput(org_id=connection.org_id, connection_id=connection.id,
                                   notification_url=notification_url),
            id=graph_subscription_id(connection.org_id, connection.id), task_queue=task_queue,
            priority=org_priority(connection.org_id),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=UPKEEP_EVERY)], jitter=timedelta(minutes=10)),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=UPKEEP_EVERY),
        state=ScheduleState(note=f"Graph subscription upkeep of connection {connection.id}"),
    )


async def ensure_graph_upkeep(
    client: Client, settings: Settings, connection: Connection, *, run_now: bool = False
) -> bool | None:
    """Create the connection's Graph subscription upkeep schedule, or bring it up to date (URL, queue, interval).

    Like ``ensure_schedules``: a new schedule of an active connection, or any when ``run_now`` is set (a
    connection that just became active), runs at once; runs of a connection that is not active skip quietly.
    Returns whether the schedule was created now; None when the connection gets none (not a provider with
    Graph subscriptions, or no ``HUB_PUBLIC_URL`` — logged, and an existing schedule is left as it is).
    """
    url = graph_notification_url(settings, connection)
    if url is None:
        entry = catalogue().providers.get(connection.provider)
        if entry is not None and CREATE_SUBSCRIPTION in entry.actions:  # (a pending one, e.g. the demo's: quieter)
            log.log(logging.WARNING if connection.status == "active" else logging.INFO,
                    "no Graph subscription upkeep for connection %s: HUB_PUBLIC_URL is not set, so Graph cannot "
                    "reach the hub", connection.id)
        return None
    wanted = _graph_schedule(connection, url, settings.task_queue)

    async def update(handle: ScheduleHandle) -> None:
        def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule = current.description.schedule  # keeps its state (paused or not)
            schedule.action, schedule.spec, schedule.policy = wanted.action, wanted.spec, wanted.policy
            return ScheduleUpdate(schedule=schedule)

        await handle.update(replace)

    return await _ensure(client, graph_subscription_id(connection.org_id, connection.id), wanted,
                         active=connection.status == "active", run_now=run_now, update=update)


async def remove_graph_upkeep(client: Client, connection: Connection) -> None:
    """Delete the connection's Graph subscription upkeep schedule (the subscription itself lapses at its expiry)."""
    await delete_schedule(client, graph_subscription_id(connection.org_id, connection.id))


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
