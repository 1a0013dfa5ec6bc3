"""The Temporal worker: registers the workflows and the activities, bound to the hub runtime."""

from __future__ import annotations

import asyncio
import logging
import random

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import PollerBehaviorAutoscaling, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import build_activities
from activities.ai_retraining import AiRetraining
from activities.ai_training import AiTraining
from activities.ai_types import ai_training_queue
from activities.connections import ConnectionActivities
from activities.connector_types import provider_task_queue
from activities.sync import SyncFetcher
from connectors.catalogue import RateLimit, catalogue
from hub.runtime import Hub
from hub.temporal import configure_fairness
from workflows import WORKFLOWS

log = logging.getLogger("hub.worker")

CONFIG_TRIES = 6  # attempts at each provider queue's fairness configuration (the server rate-limits the updates)
CONFIG_PAUSE = 0.1  # seconds before the second attempt; doubled each time, with as much again at random

#: The sandbox re-imports every non-passthrough module for each workflow run; the hub's own packages are
#: deterministic at import and hold no mutable module state, so passing them through lifts one worker from
#: ~7 to ~23 short workflows/s on these machines while workflow code itself stays sandboxed per run.
#: ``jinja2`` compiles rule templates to code that imports jinja2 modules: those must be the host's.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "workflows", "activities", "rules", "hub", "jinja2")
)
#: What the tests run the workflows under: Temporal's default sandbox, passing through only the deterministic
#: helpers (the pure ``rules`` and ``jinja2``; the activities' input/output types are passed through by the
#: workflows' own ``imports_passed_through``). The workflow modules are re-imported per run, so a clock read,
#: randomness or I/O in workflow code fails there instead of passing every test.
CHECKED_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("rules", "jinja2")
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
            # eager: a main-queue activity a workflow task schedules (a transition's ``opportunity.prepare``) comes back
            # with the task's completion and starts at once, with no matching round trip or write of its own; only
            # activities of this queue run eagerly, so the provider queues keep their fairness and per-key rates
            disable_eager_activity_execution=False,
            workflow_task_poller_behavior=PollerBehaviorAutoscaling(),  # the server says when more polls would help
        ),
        *provider_workers(client, queue, ConnectionActivities(hub)),
        Worker(client, task_queue=ai_training_queue(queue),
               activities=[AiTraining(hub).train_model, AiRetraining(hub).retrain], max_concurrent_activities=1),
    ]


def provider_workers(client: Client, main_queue: str, connectors: ConnectionActivities) -> list[Worker]:
    """One worker per catalogue provider on its own task queue (``{main}-{action prefix}``), running its
    ``connector.run_action`` and sync fetch tasks.

    No rate is set here: a provider's limit belongs to each connection, not to the queue. The server hands
    each connection's tasks out at its rate and interactive ones first (task-queue fairness, set up by
    ``configure_provider_queues``), across every worker process; each request the tasks make then draws
    from the connection's budget (activities/budgets.py)."""
    fetcher = SyncFetcher(connectors)
    return [
        Worker(
            client,
            task_queue=provider_task_queue(main_queue, entry.action_prefix),
            activities=[connectors.run_action, *fetcher.provider_queue()],
        )
        for entry in catalogue().providers.values()
    ]


async def configure_provider_queues(client: Client, main_queue: str, limits: dict[str, RateLimit] | None = None) -> None:
    """On the server, each provider queue's per-fairness-key rate (a key is a connection) is the provider's
    published limit (``limits`` overrides by action prefix); a connection with a limit of its own gets a
    matching weight when its first task runs (``ConnectionActivities``).

    Workers starting together meet the server's rate limit on these updates (60 sent at once: 43 refused): a
    refused one is sent again after a growing, jittered pause; one still refused after ``CONFIG_TRIES`` is logged
    and left (the queue keeps what another worker set; every request still draws from its connection's budget,
    which holds the limit), so a worker never fails to start over it."""
    for entry in catalogue().providers.values():
        limit = (limits or {}).get(entry.action_prefix) or entry.rate_limit
        queue = provider_task_queue(main_queue, entry.action_prefix)
        for attempt in range(CONFIG_TRIES):
            try:
                await configure_fairness(client, queue, key_rate=limit.per_second)
                break
            except RPCError as exc:
                if exc.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                    raise
                if attempt == CONFIG_TRIES - 1:
                    log.warning("fairness of task queue %s not set, the server refused %d times: %s", queue,
                                CONFIG_TRIES, exc.message)
                else:
                    await asyncio.sleep(CONFIG_PAUSE * 2**attempt * (1 + random.random()))
