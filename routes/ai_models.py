"""``/v1/ai/models``: train an org's lead or deal model from a CSV upload; list the org's models.

``POST`` takes ``multipart/form-data``: ``kind`` (``leads`` | ``deals``), ``file`` (the CSV, plain or
gzip-compressed — compress large files to stay under the request size limit) and optionally ``mapping``
(JSON: the column mapping, defaults fit the X Education / Maven layouts). Training takes seconds; the new
model becomes the org's active model of its kind at once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from ai.service import register_model, train_csv
from ai.tabular import DataError
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep
from hub.problems import Problem
from hub.store.ai import AiModel

router = APIRouter(prefix="/v1/ai/models", tags=["ai"])
Kind = Literal["leads", "deals"]


class AiModelPublic(BaseModel):
    """A trained model (never its artifact)."""

    id: str
    kind: str
    version: str
    active: bool
    metrics: dict
    mapping: dict
    created_by: str
    created_at: datetime


def _public(row: AiModel) -> AiModelPublic:
    return AiModelPublic(id=row.id, kind=row.kind, version=row.version, active=row.active, metrics=row.metrics,
                         mapping=row.mapping, created_by=row.created_by, created_at=row.created_at)


@router.post("", status_code=201)
async def train_model(
    hub: HubDep,
    key: AdminKey,
    kind: Annotated[Kind, Form()],
    file: Annotated[UploadFile, File(description="CSV of historical leads or deals (may be gzip-compressed)")],
    mapping: Annotated[str | None, Form(description="column mapping as JSON")] = None,
) -> AiModelPublic:
    """Train the org's model of ``kind`` on the uploaded history and make it the active one."""
    try:
        parsed = json.loads(mapping) if mapping else None
    except json.JSONDecodeError as exc:
        raise Problem(422, f"mapping is not valid JSON: {exc.msg}") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise Problem(422, "mapping must be a JSON object")
    raw = await file.read()
    try:
        model = await asyncio.to_thread(train_csv, kind, raw, parsed)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Problem(422, f"invalid mapping: {detail}") from None
    except DataError as exc:
        raise Problem(422, f"cannot train on this file: {exc}") from None
    row = await register_model(hub, key.org_id, model, actor=key.key_id)
    return _public(row)


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
