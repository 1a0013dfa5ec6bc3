"""AI tables: leads and their scores, every computed insight (with provenance), trained models per org.

Model artifacts are stored in ``ai_models.artifact`` (joblib bytes of a model this hub trained itself,
checked against ``artifact_sha256`` before loading), so the API and every worker see the same model.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, deferred, mapped_column

from hub.store.base import Base, utcnow


class Lead(Base):
    """A lead the CRM registered, with its latest score."""

    __tablename__ = "leads"
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[dict] = mapped_column(default=dict)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    low: Mapped[float | None] = mapped_column(Float, default=None)
    high: Mapped[float | None] = mapped_column(Float, default=None)
    factors: Mapped[list] = mapped_column(default=list)
    model_version: Mapped[str | None] = mapped_column(String(100), default=None)
    source: Mapped[str | None] = mapped_column(String(16), default=None)
    moment: Mapped[str | None] = mapped_column(String(24), default=None)  # what the score knew (ai.moments)
    scored_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AiInsight(Base):
    """One computed insight: what it was about, the model version, its inputs, output and provenance."""

    __tablename__ = "ai_insights"
    __table_args__ = (Index("ix_ai_insights_subject", "org_id", "subject_type", "subject_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))  # opportunity | lead
    subject_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # next_action | deal_risk | lead_score
    model_version: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[dict] = mapped_column(default=dict)
    output: Mapped[dict] = mapped_column(default=dict)
    provenance: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AiModel(Base):
    """A model trained for one org (``kind`` leads or deals); one per kind is active."""

    __tablename__ = "ai_models"
    __table_args__ = (UniqueConstraint("org_id", "kind", "version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    metrics: Mapped[dict] = mapped_column(default=dict)
    mapping: Mapped[dict] = mapped_column(default=dict)
    artifact: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # retraining never replaces a pinned model
    origin: Mapped[str] = mapped_column(String(16), default="upload")  # upload | retrain | cli | demo


class AiTrainingJob(Base):
    """Training on an uploaded CSV, run by the ``ai.train_model`` activity: its progress and result.

    ``upload`` holds the file as sent (at most the request body limit) until the job ends."""

    __tablename__ = "ai_training_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | succeeded | failed
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    mapping: Mapped[dict | None] = mapped_column(default=None)
    upload: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, default=None))
    rows: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


def new_job_id() -> str:
    """``job_`` and 16 hex digits."""
    return "job_" + secrets.token_hex(8)


def new_model_id() -> str:
    """``mdl_`` and 16 hex digits."""
    return "mdl_" + secrets.token_hex(8)


async def record_insight(
    session: AsyncSession, org_id: str, subject_type: str, subject_id: str, kind: str,
    model_version: str, source: str, inputs: dict, output: dict, provenance: dict,
) -> AiInsight:
    """Append one insight row (inside the caller's transaction)."""
    row = AiInsight(org_id=org_id, subject_type=subject_type, subject_id=subject_id, kind=kind,
                    model_version=model_version, source=source, inputs=inputs, output=output,
                    provenance=provenance)
    session.add(row)
    await session.flush()
    return row


_INSERT_INSIGHT = insert(AiInsight)


def write_insight(conn: Connection, values: dict) -> None:
    """Append one insight row (``values``: ``AiInsight``'s columns): Core on a sync connection, for
    ``Database.write``, as an insight is stored on every transition."""
    conn.execute(_INSERT_INSIGHT, values)


async def latest_insights(session: AsyncSession, org_id: str, subject_type: str, subject_id: str,
                          limit: int = 20) -> list[AiInsight]:
    """The newest insights about one subject, newest first."""
    rows = await session.scalars(
        select(AiInsight)
        .where(AiInsight.org_id == org_id, AiInsight.subject_type == subject_type, AiInsight.subject_id == subject_id)
        .order_by(AiInsight.id.desc())
        .limit(limit)
    )
    return list(rows)


async def active_model_row(session: AsyncSession, org_id: str, kind: str) -> AiModel | None:
    """The org's active model of a kind (artifact not loaded)."""
    return await session.scalar(
        select(AiModel).where(AiModel.org_id == org_id, AiModel.kind == kind, AiModel.active.is_(True)).limit(1)
    )


async def activate_model(session: AsyncSession, row: AiModel) -> AiModel:
    """Store ``row`` (or the existing row of the same version) as the org's only active model of its kind."""
    existing = await session.scalar(
        select(AiModel).where(AiModel.org_id == row.org_id, AiModel.kind == row.kind, AiModel.version == row.version)
    )
    await session.execute(
        update(AiModel).where(AiModel.org_id == row.org_id, AiModel.kind == row.kind).values(active=False)
    )
    if existing is not None:
        existing.active = True
        return existing
    row.active = True
    session.add(row)
    await session.flush()
    return row


async def model_artifact(session: AsyncSession, model_id: str) -> tuple[bytes, str] | None:
    """(artifact bytes, sha256) of a model."""
    found = (await session.execute(
        select(AiModel.artifact, AiModel.artifact_sha256).where(AiModel.id == model_id)
    )).first()
    return (found[0], found[1]) if found else None
