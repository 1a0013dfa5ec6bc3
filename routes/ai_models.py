"""``/v1/ai/models``: train an org's lead or deal model from a CSV upload; list the org's models.

``POST`` takes ``multipart/form-data``: ``kind`` (``leads`` | ``deals``), ``file`` (the CSV, plain or
gzip-compressed — compress large files to stay under the request size limit) and optionally ``mapping``
(JSON: the column mapping, defaults fit the X Education / Maven layouts). The upload is checked at once —
inflated as a stream up to ``HUB_AI_UPLOAD_MAX_BYTES`` (413 past it), at most ``HUB_AI_UPLOAD_MAX_ROWS`` rows
and ``HUB_AI_UPLOAD_MAX_COLUMNS`` columns (422) — and answered ``202`` with a training job
(``Location: /v1/ai/models/jobs/{id}``). Training runs outside the API process (``workflows.ai_training``);
the job says its stage, progress and, at the end, the new model (then the org's active model of its kind)
or why the file could not be used.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from temporalio.service import RPCError, RPCStatusCode

from activities.ai_retraining import ensure_retraining
from activities.ai_training import upload_limits
from activities.ai_types import TrainModelInput, ai_retrain_schedule_id, ai_training_workflow_id
from activities.connector_types import org_priority
from ai.tabular import DataError
from ai.upload import UploadTooLarge, mapping_for, read_upload
from hub.auth import ensure_org
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep, TemporalDep
from hub.problems import Problem
from hub.store.ai import AiModel, AiTrainingJob, activate_model, new_job_id
from hub.store.orgs import record_audit
from workflows.ai_training import AiTrainingWorkflow

router = APIRouter(prefix="/v1/ai/models", tags=["ai"])
Kind = Literal["leads", "deals"]


class AiModelPublic(BaseModel):
    """A trained model (never its artifact). ``origin``: upload, retrain, cli or demo; a ``pinned`` model is never
    replaced by retraining; ``metrics.challenge`` holds a retrained model's champion / challenger figures."""

    id: str
    kind: str
    version: str
    active: bool
    pinned: bool
    origin: str
    metrics: dict
    mapping: dict
    created_by: str
    created_at: datetime


def _public(row: AiModel) -> AiModelPublic:
    return AiModelPublic(id=row.id, kind=row.kind, version=row.version, active=row.active, pinned=row.pinned,
                         origin=row.origin, metrics=row.metrics, mapping=row.mapping, created_by=row.created_by,
                         created_at=row.created_at)


class TrainingJobPublic(BaseModel):
    """A training job: ``queued`` → ``running`` (stage, progress 0–1) → ``succeeded`` (``model_id``) or
    ``failed`` (``error``)."""

    id: str
    kind: str
    status: str
    stage: str
    progress: float
    rows: int
    columns: int
    model_id: str | None
    error: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime


def _job_public(job: AiTrainingJob) -> TrainingJobPublic:
    return TrainingJobPublic(id=job.id, kind=job.kind, status=job.status, stage=job.stage, progress=job.progress,
                             rows=job.rows, columns=job.columns, model_id=job.model_id, error=job.error,
                             created_by=job.created_by, created_at=job.created_at,
                             updated_at=job.updated_at)


def _parse_mapping(kind: str, mapping: str | None) -> dict | None:
    try:
        parsed = json.loads(mapping) if mapping else None
    except json.JSONDecodeError as exc:
        raise Problem(422, f"mapping is not valid JSON: {exc.msg}") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise Problem(422, "mapping must be a JSON object")
    try:
        mapping_for(kind, parsed)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Problem(422, f"invalid mapping: {detail}") from None
    return parsed


@router.post("", status_code=202, responses={202: {"headers": {"Location": {"schema": {"type": "string"}}}}})
async def train_model(
    hub: HubDep,
    client: TemporalDep,
    key: AdminKey,
    response: Response,
    kind: Annotated[Kind, Form()],
    file: Annotated[UploadFile, File(description="CSV of historical leads or deals (may be gzip-compressed)")],
    mapping: Annotated[str | None, Form(description="column mapping as JSON")] = None,
) -> TrainingJobPublic:
    """Check the upload and start training the org's model of ``kind`` on it (a job, trained off the API)."""
    parsed = _parse_mapping(kind, mapping)
    async with hub.db.session() as session:
        active = await session.scalar(select(func.count()).select_from(AiTrainingJob).where(
            AiTrainingJob.org_id == key.org_id, AiTrainingJob.status.in_(("queued", "running"))))
    if active and active >= hub.settings.ai_training_max_active:
        raise Problem(429, f"this org has {active} training jobs queued or running; retry when one has ended",
                      headers={"Retry-After": "30"})
    raw = await file.read()
    limits = upload_limits(hub.settings)
    try:
        _, rows, columns = await asyncio.to_thread(read_upload, raw, limits)
    except UploadTooLarge as exc:
        raise Problem(413, f"file: {exc}") from None
    except DataError as exc:
        raise Problem(422, f"file: {exc}") from None
    job = AiTrainingJob(id=new_job_id(), org_id=key.org_id, kind=kind, mapping=parsed, upload=raw, rows=rows,
                        columns=columns, created_by=key.key_id)
    async with hub.db.session() as session:
        await ensure_org(session, key.org_id)
        session.add(job)
    try:
        await client.start_workflow(
            AiTrainingWorkflow.run, TrainModelInput(org_id=key.org_id, job_id=job.id),
            id=ai_training_workflow_id(key.org_id, job.id), task_queue=hub.settings.task_queue,
            priority=org_priority(key.org_id),
        )
    except RPCError as exc:
        async with hub.db.session() as session:
            await session.delete(await session.get(AiTrainingJob, job.id))
        raise Problem(503, f"training could not be started: {exc.message}", title="Temporal unavailable") from None
    response.headers["Location"] = f"/v1/ai/models/jobs/{job.id}"
    return _job_public(job)


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, session: SessionDep, key: ReaderKey) -> TrainingJobPublic:
    """A training job of the org: its stage, progress and result; another org's is 404."""
    job = await session.get(AiTrainingJob, job_id)
    if job is None or job.org_id != key.org_id:
        raise Problem(404, f"training job {job_id!r} not found")
    return _job_public(job)


@router.get("")
async def list_models(session: SessionDep, key: ReaderKey, kind: Kind | None = None) -> list[AiModelPublic]:
    """The org's models, newest first."""
    query = select(AiModel).where(AiModel.org_id == key.org_id).order_by(AiModel.created_at.desc())
    if kind is not None:
        query = query.where(AiModel.kind == kind)
    return [_public(row) for row in await session.scalars(query)]


@router.get("/{model_id}")
async def get_model(model_id: str, session: SessionDep, key: ReaderKey) -> AiModelPublic:
    """One of the org's models; another org's is 404."""
    row = await session.get(AiModel, model_id)
    if row is None or row.org_id != key.org_id:
        raise Problem(404, f"model {model_id!r} not found")
    return _public(row)


class ModelChange(BaseModel):
    """``active: true`` makes this version the org's model of its kind (a rollback, or taking a challenger);
    ``pinned`` keeps retraining from replacing it."""

    model_config = ConfigDict(extra="forbid")

    active: Literal[True] | None = None
    pinned: bool | None = None


@router.patch("/{model_id}")
async def change_model(model_id: str, change: ModelChange, hub: HubDep, key: AdminKey) -> AiModelPublic:
    """Activate (roll back to) and/or pin or unpin one of the org's models."""
    async with hub.db.session() as session:
        row = await session.get(AiModel, model_id)
        if row is None or row.org_id != key.org_id:
            raise Problem(404, f"model {model_id!r} not found")
        if change.active:
            row = await activate_model(session, row)
        if change.pinned is not None:
            row.pinned = change.pinned
        await record_audit(session, key.org_id, key.key_id, "ai_model.changed", f"ai_model/{row.id}",
                           change.model_dump(exclude_none=True))
        return _public(row)


class Retraining(BaseModel):
    """The org's retraining schedule: every ``every_hours`` hours, unless paused."""

    model_config = ConfigDict(extra="forbid")

    every_hours: int = Field(default=168, ge=1, le=24 * 90)
    paused: bool = False


retraining = APIRouter(prefix="/v1/ai/retraining", tags=["ai"])


@retraining.put("")
async def set_retraining(body: Retraining, hub: HubDep, client: TemporalDep, key: AdminKey) -> Retraining:
    """Create or change the org's Temporal Schedule that retrains its models from its own outcomes."""
    await ensure_retraining(client, key.org_id, timedelta(hours=body.every_hours), hub.settings.task_queue,
                            body.paused)
    return body


@retraining.post(":run", status_code=202)
async def run_retraining(client: TemporalDep, key: AdminKey) -> dict:
    """Retrain now (the schedule's trigger); 404 until the schedule exists."""
    try:
        await client.get_schedule_handle(ai_retrain_schedule_id(key.org_id)).trigger()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(404, "no retraining schedule: PUT /v1/ai/retraining first") from None
        raise
    return {"schedule_id": ai_retrain_schedule_id(key.org_id), "triggered": True}
