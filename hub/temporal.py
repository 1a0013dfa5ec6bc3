"""Connecting to Temporal with the hub's encrypting data converter; task-queue names; schedules."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Awaitable, Callable

from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleUpdate,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, SerializationContext, WithSerializationContext
from temporalio.service import RPCError, RPCStatusCode

from hub.settings import Settings
from hub.telemetry import temporal_interceptor
from hub.vault import DataKeys, EncryptionCodec, Vault


def provider_queue(settings: Settings, provider: str) -> str:
    """The task queue whose activities call one provider (rate-limited per provider)."""
    return f"{settings.task_queue}-{provider}"


async def upsert_schedule(
    client: Client, schedule_id: str, wanted: Schedule, *, trigger_immediately: bool = False,
    update: Callable[[ScheduleHandle], Awaitable[None]] | None = None,
) -> tuple[ScheduleHandle, bool]:
    """Create the schedule, or bring the existing one up to date: with ``update`` if given, else by replacing it
    with ``wanted``. Returns its handle and whether it was created now."""
    try:
        return await client.create_schedule(schedule_id, wanted, trigger_immediately=trigger_immediately), True
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)
        await (update(handle) if update else handle.update(lambda _: ScheduleUpdate(schedule=wanted)))
        return handle, False


async def delete_schedule(client: Client, schedule_id: str) -> bool:
    """Delete a schedule; one that does not exist is fine. Returns whether it existed."""
    try:
        await client.get_schedule_handle(schedule_id).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ContextCopyingConverter(DataConverter):
    """A ``DataConverter`` whose ``with_context`` copies it with the parts that take the context, as temporalio's
    does, but without building a payload and a failure converter first only to replace them (its
    ``dataclasses.replace`` runs ``__post_init__``): a worker asks for it for every activity's payloads, which
    here is every transition's, to let the codec learn the workflow's org."""

    def with_context(self, context: SerializationContext) -> ContextCopyingConverter:
        changed = {}
        for name in ("payload_converter", "payload_codec", "failure_converter", "external_storage"):
            part = getattr(self, name)
            if isinstance(part, WithSerializationContext) and (new := part.with_context(context)) is not part:
                changed[name] = new
        if not changed:
            return self
        cloned = copy.copy(self)  # no __init__, so no __post_init__
        for name, part in changed.items():
            object.__setattr__(cloned, name, part)
        return cloned


def data_converter(vault: Vault, keys: DataKeys | None = None) -> DataConverter:
    """Pydantic-aware converter whose payloads are encrypted: an org's under its data key (``keys``), the rest by
    the vault."""
    return ContextCopyingConverter(payload_converter_class=pydantic_data_converter.payload_converter_class,
                                   failure_converter_class=pydantic_data_converter.failure_converter_class,
                                   payload_codec=EncryptionCodec(vault, keys))


async def connect(settings: Settings, vault: Vault, address: str | None = None, keys: DataKeys | None = None) -> Client:
    """A Temporal client for the hub's namespace."""
    return await Client.connect(
        address or settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(vault, keys),
        interceptors=[temporal_interceptor()],
    )


#: What the Temporal server needs switched on (dynamic config) for the hub's provider queues: the new matcher
#: with task-queue fairness (per-connection keys, per-key rate limits, priority keys), and one partition per
#: queue, so that one partition sees every task of a key (rate and priority are kept per partition); and eager
#: activities (the main worker's, see ``worker.build_workers``; the dev server has them on already).
SERVER_DYNAMIC_CONFIG = {
    "system.enableActivityEagerExecution": "true",
    "matching.useNewMatcher": "true",
    "matching.enableFairness": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


def dev_server_args() -> list[str]:
    """``temporal server start-dev`` arguments setting ``SERVER_DYNAMIC_CONFIG``."""
    return [arg for name, value in SERVER_DYNAMIC_CONFIG.items() for arg in ("--dynamic-config-value", f"{name}={value}")]


#: The embedded server's SQLite file in WAL mode, every commit still synced (``synchronous`` left at its default):
#: the rollback journal it used took two syncs and a journal file per transaction; transitions through the hub
#: answered 17-25% sooner in WAL mode (README, "Session 12").
DEV_SERVER_SQLITE_PRAGMAS = ("journal_mode=wal",)


def dev_server_file_args(db_file: str) -> list[str]:
    """``temporal server start-dev`` arguments storing its state in ``db_file`` (``DEV_SERVER_SQLITE_PRAGMAS``)."""
    pragmas = (arg for pragma in DEV_SERVER_SQLITE_PRAGMAS for arg in ("--sqlite-pragma", pragma))
    return ["--db-filename", db_file, *pragmas]


async def configure_fairness(client: Client, task_queue: str, *, key_rate: float | None = None,
                             weights: dict[str, float] | None = None) -> None:
    """Set an activity task queue's fairness configuration on the server (as ``temporal task-queue config set``
    does): the rate each fairness key's tasks are handed out at (scaled by the key's weight), and weights."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import RateLimit
    from temporalio.api.workflowservice.v1 import UpdateTaskQueueConfigRequest

    request = UpdateTaskQueueConfigRequest(
        namespace=client.namespace, identity=client.identity, task_queue=task_queue,
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        set_fairness_weight_overrides=weights or {},
    )
    if key_rate is not None:
        request.update_fairness_key_rate_limit_default.CopyFrom(UpdateTaskQueueConfigRequest.RateLimitUpdate(
            rate_limit=RateLimit(requests_per_second=key_rate), reason="fulqrun-hub: per-connection provider budget"))
    await client.workflow_service.update_task_queue_config(request)
