"""Training jobs in tests: the workers that run them (the real Temporal server) and waiting for one to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ai_retraining import AiRetraining
from activities.ai_training import AiTraining
from activities.ai_types import ai_training_queue
from hub.runtime import Hub
from tests.conftest import bearer
from worker import WORKFLOW_RUNNER
from workflows.ai_training import AiRetrainWorkflow, AiTrainingWorkflow


@contextlib.asynccontextmanager
async def training_workers(hub: Hub, client: Client) -> AsyncIterator[None]:
    """The main-queue worker with the training workflow and the training queue's worker, as ``build_workers``."""
    queue = hub.settings.task_queue
    async with (
        Worker(client, task_queue=queue, workflows=[AiTrainingWorkflow, AiRetrainWorkflow],
               workflow_runner=WORKFLOW_RUNNER),
        Worker(client, task_queue=ai_training_queue(queue),
               activities=[AiTraining(hub).train_model, AiRetraining(hub).retrain], max_concurrent_activities=1),
    ):
        yield


async def finished_job(api: httpx.AsyncClient, key: str, location: str, timeout: float = 120) -> dict:
    """Poll a training job until it has succeeded or failed; its last state."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = (await api.get(location, headers=bearer(key))).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"training job still {job['status']}: {job}"
        await asyncio.sleep(0.25)
