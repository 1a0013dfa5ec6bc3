"""Orgs, API keys, org data keys, the audit log and idempotency records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow


class Org(Base):
    """A customer organisation; every other row belongs to one."""

    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    crm_callback_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    flags: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored only as a SHA-256 hash of its secret part."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class OrgDataKey(Base):
    """An org's data key for Temporal payloads, stored only wrapped (sealed) by the vault keys."""

    __tablename__ = "org_data_keys"
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    wrapped: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who changed what, when: one row per admin action."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """The first answer to a write sent with an ``Idempotency-Key``, replayed on retries."""

    __tablename__ = "idempotency_keys"
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


async def record_audit(
    session: AsyncSession, org_id: str, actor: str, action: str, target: str, detail: dict | None = None
) -> None:
    """Append one entry to the audit log (inside the caller's transaction)."""
    session.add(AuditEntry(org_id=org_id, actor=actor, action=action, target=target, detail=detail or {}))


async def list_audit(
    session: AsyncSession, org_id: str, *, resource: str | None = None, actor: str | None = None,
    action: str | None = None, since: datetime | None = None, limit: int = 50, before_id: int | None = None,
) -> list[AuditEntry]:
    """The org's audit entries, newest first; ``resource`` matches a target and everything under it
    (``connection/c1`` also finds ``connection/c1/syncs/…``); ``before_id`` continues a page."""
    query = select(AuditEntry).where(AuditEntry.org_id == org_id)
    if resource is not None:
        query = query.where(or_(AuditEntry.target == resource, AuditEntry.target.startswith(resource + "/")))
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list((await session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit))).all())
