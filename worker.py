"""The Temporal worker: registers the workflows and the activities, bound to the hub runtime."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import build_activities
from activities.ai_retraining import AiRetraining
from activities.ai_training import AiTraining
from activities.ai_types import ai_training_queue
from activities.connections import ConnectionActivities
from activities.connector_types import provider_task_queue
from activities.sync import SyncFetcher
from connectors.catalogue import catalogue
from hub.runtime import Hub
from workflows import WORKFLOWS

#: The sandbox re-imports every non-passthrough module for each workflow run; the hub's own packages are
#: deterministic at import and hold no mutable module state, so passing them through lifts one worker from
#: ~7 to ~23 short workflows/s on these machines while workflow code itself stays sandboxed per run.
#: ``jinja2`` compiles rule templates to code that imports jinja2 modules: those must be the host's.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "workflows", "activities", "rules", "hub", "jinja2")
)


def build_workers(hub: Hub, client: Client, task_queue: str | None = None) -> list[Worker]:
    """The workers this process runs: the main queue (workflows and core activities), one per provider and
    the AI training queue (one job at a time, each trained in a child process)."""
    queue = task_queue or hub.settings.task_queue
    return [
        Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS,
            activities=build_activities(hub),
            workflow_runner=WORKFLOW_RUNNER,
            disable_eager_activity_execution=True,  # eager activities would bypass task-queue rate limits
        ),
        *provider_workers(client, queue, ConnectionActivities(hub)),
        Worker(client, task_queue=ai_training_queue(queue),
               activities=[AiTraining(hub).train_model, AiRetraining(hub).retrain], max_concurrent_activities=1),
    ]


def provider_workers(client: Client, main_queue: str, connectors: ConnectionActivities) -> list[Worker]:
    """One worker per catalogue provider on its own task queue (``{main}-{action prefix}``), whose
    ``connector.run_action`` and ``sync.fetch_page`` tasks share the provider's budget.

    The server hands the tasks out at the provider's ``queue_per_second`` (95% of its published rate):
    the ceiling across every worker process, but a token bucket that lets a second's worth through at once
    after a pause. ``connectors`` paces the calls of this process at the same average rate and holds them to
    the limit's hard windows on the times they actually leave. The two run at the same rate on purpose: a
    faster queue would pile tasks up in the worker (waiting out their start-to-close timeout in the pacer,
    for minutes on a one-request-a-second provider), a slower one would leave the pacer idle; the server's
    bucket makes up its own late hand-outs, so the pacer keeps a small backlog and is the one that binds."""
    fetcher = SyncFetcher(connectors)
    return [
        Worker(
            client,
            task_queue=provider_task_queue(main_queue, entry.action_prefix),
            activities=[connectors.run_action, fetcher.fetch_page],
            max_task_queue_activities_per_second=connectors.limit(entry).queue_per_second,
        )
        for entry in catalogue().providers.values()
    ]
