"""The main task queue serves orgs in turn: an org's backlog of workflow tasks (a bulk import) does not hold up
another org's (Temporal task-queue fairness, the org as fairness key)."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities.connector_types import org_priority

ORDER: list[str] = []


@workflow.defn(sandboxed=False)
class Arrival:
    """Records the order its runs are first handled in."""

    @workflow.run
    async def run(self, org: str) -> None:
        if not workflow.unsafe.is_replaying():
            ORDER.append(org)


async def test_one_orgs_backlog_does_not_hold_up_another_org(client: Client) -> None:
    queue = f"fair-{uuid.uuid4().hex[:8]}"
    for i in range(60):  # org A's bulk import, queued before org B's one start
        await client.start_workflow(Arrival.run, "a", id=f"{queue}-a{i}", task_queue=queue, priority=org_priority("a"))
    await client.start_workflow(Arrival.run, "b", id=f"{queue}-b", task_queue=queue, priority=org_priority("b"))
    ORDER.clear()
    async with Worker(client, task_queue=queue, workflows=[Arrival], max_concurrent_workflow_tasks=2,
                      max_concurrent_workflow_task_polls=2):
        while len(ORDER) < 61:
            await asyncio.sleep(0.05)
    assert ORDER.index("b") < 10, ORDER.index("b")  # in turn, not after A's 60 (first in, first out would say 60)
