"""The Temporal worker: registers the workflows and the activities, bound to the hub runtime."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities import build_activities
from hub.runtime import Hub
from workflows import WORKFLOWS


def build_workers(hub: Hub, client: Client, task_queue: str | None = None) -> list[Worker]:
    """The workers this process runs: the main queue (workflows and core activities)."""
    queue = task_queue or hub.settings.task_queue
    return [
        Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS,
            activities=build_activities(hub),
        )
    ]
