"""``ai.train_model``: train a model on an uploaded CSV in a child process, recording the job's progress.

The activity runs on its own task queue (``{main}-ai-training``, one job at a time per worker). Training
itself runs in a fresh child process (``spawn``) at the lowest CPU priority, under the same upload limits the API checked: whatever it
allocates is freed when the child exits, and the worker's event loop keeps heartbeating meanwhile. Bad data
ends the job ``failed`` with the reason (no retry); an unexpected error is retried, and the last attempt
marks the job failed.
"""

from __future__ import annotations

import asyncio
import multiprocessing

from sqlalchemy.orm import undefer
from temporalio import activity

from activities.ai_types import TRAIN_ATTEMPTS, TRAIN_MODEL, TrainModelInput, TrainModelResult
from ai import artifacts, service
from ai.tabular import DataError
from ai.upload import UploadLimits, UploadTooLarge, train_upload
from hub.bounded import lowest_priority
from hub.runtime import Hub
from hub.settings import Settings
from hub.store.ai import AiTrainingJob
from hub.store.base import utcnow

HEARTBEAT_EVERY = 10.0  # seconds
POLL_EVERY = 0.25


def upload_limits(settings: Settings) -> UploadLimits:
    """The caps on a training upload, from the settings."""
    return UploadLimits(settings.ai_upload_max_bytes, settings.ai_upload_max_rows, settings.ai_upload_max_columns)


class AiTraining:
    """The training activity, bound to the hub runtime."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def _update(self, job_id: str, **values: object) -> None:
        async with self.hub.db.session() as session:
            job = await session.get(AiTrainingJob, job_id)
            for name, value in values.items():
                setattr(job, name, value)
            job.updated_at = utcnow()

    async def _end(self, job_id: str, error: str | None, model_id: str | None = None) -> TrainModelResult:
        status = "failed" if error else "succeeded"
        await self._update(job_id, status=status, stage=status, progress=1.0, error=error, model_id=model_id,
                           upload=None)
        return TrainModelResult(job_id=job_id, status=status, model_id=model_id, error=error)

    @activity.defn(name=TRAIN_MODEL)
    async def train_model(self, input: TrainModelInput) -> TrainModelResult:
        """Train the job's model in a child process and make it the org's active model of its kind."""
        async with self.hub.db.session() as session:
            job = await session.get(AiTrainingJob, input.job_id, options=[undefer(AiTrainingJob.upload)])
            if job is None or job.org_id != input.org_id:
                return TrainModelResult(job_id=input.job_id, status="failed", error="no such training job")
            if job.status in ("succeeded", "failed"):  # a retry after the job was recorded
                return TrainModelResult(job_id=job.id, status=job.status, model_id=job.model_id, error=job.error)
            kind, raw, mapping, actor = job.kind, job.upload or b"", job.mapping, job.created_by
        await self._update(input.job_id, status="running", stage="training", progress=0.1)
        try:
            data = await self._in_child(kind, raw, mapping)
        except (DataError, UploadTooLarge) as exc:
            return await self._end(input.job_id, f"cannot train on this file: {exc}")
        except Exception as exc:
            if activity.info().attempt >= TRAIN_ATTEMPTS:
                await self._end(input.job_id, f"training failed: {type(exc).__name__}")
            raise
        await self._update(input.job_id, stage="storing", progress=0.9)
        model = await asyncio.to_thread(artifacts.loads, data, None, kind)
        row = await service.register_model(self.hub, input.org_id, model, actor, data=data)
        return await self._end(input.job_id, None, row.id)

    async def _in_child(self, kind: str, raw: bytes, mapping: dict | None) -> bytes:
        """``train_upload`` in a fresh process, killed when it ends or the activity is cancelled."""
        limits = upload_limits(self.hub.settings)
        pool = multiprocessing.get_context("spawn").Pool(1, initializer=lowest_priority)
        try:
            pending = pool.apply_async(train_upload, (kind, raw, mapping, limits))
            waited = 0.0
            while not pending.ready():
                await asyncio.sleep(POLL_EVERY)
                waited += POLL_EVERY
                if waited >= HEARTBEAT_EVERY:
                    activity.heartbeat()
                    waited = 0.0
            return pending.get()
        finally:
            pool.terminate()
