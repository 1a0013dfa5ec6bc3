"""From a workflow: run a connector action (``connector.run_action``) on its provider's task queue."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.connections import ConnectionActivities
    from activities.connector_types import (
        ACTION_HEARTBEAT,
        ACTION_RETRY,
        INTERACTIVE_PRIORITY,
        ActionCall,
        ActionResult,
        provider_of,
        provider_priority,
        provider_task_queue,
    )


async def execute_action(
    call: ActionCall,
    *,
    start_to_close_timeout: timedelta = timedelta(minutes=2),
    schedule_to_close_timeout: timedelta = timedelta(minutes=30),
    retry_policy: RetryPolicy = ACTION_RETRY,
) -> ActionResult:
    """From a workflow: run ``call`` on its provider's task queue, as interactive work of its connection (see
    ``provider_priority``), and return the result.

    The provider queue differs from the workflow's own queue, so the activity is never executed eagerly
    (eager execution would bypass the task queue's fairness and per-key rate limits). The action heartbeats: if
    its worker dies, it runs again elsewhere ``ACTION_HEARTBEAT`` later.
    """
    return await workflow.execute_activity_method(
        ConnectionActivities.run_action,
        call,
        task_queue=provider_task_queue(workflow.info().task_queue, provider_of(call.action)),
        start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout,
        heartbeat_timeout=ACTION_HEARTBEAT,
        retry_policy=retry_policy,
        priority=provider_priority(call.org_id, call.connection_id, INTERACTIVE_PRIORITY),
    )
