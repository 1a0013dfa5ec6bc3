"""``GET /v1/audit`` (admin): who changed what and when, over everything the hub records in its audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from hub.deps import AdminKey, SessionDep
from hub.store.orgs import AuditEntry, list_audit
from routes.paging import decode_cursor, encode_cursor, utc

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEntryPublic(BaseModel):
    """One audit entry: who (an API key id, ``cli``, a workflow), what, on which resource, when, details."""

    id: int
    actor: str
    action: str
    resource: str
    detail: dict[str, Any]
    at: datetime


class AuditPage(BaseModel):
    """Entries, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[AuditEntryPublic]
    next_cursor: str | None


def public(entry: AuditEntry) -> AuditEntryPublic:
    """The API shape of an entry (also what ``fulqrun-hub audit --json`` prints)."""
    return AuditEntryPublic(id=entry.id, actor=entry.actor, action=entry.action, resource=entry.target,
                            detail=entry.detail or {}, at=utc(entry.at))


@router.get("")
async def list_entries(
    session: SessionDep,
    key: AdminKey,
    resource: Annotated[str | None, Query(description="e.g. rule/big-deal or connection/c1 (and what is under it)")]
    = None,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="e.g. rule.changed, connection.deleted")] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> AuditPage:
    """The org's audit log, newest first, filtered by resource, actor, action and time."""
    rows = await list_audit(session, key.org_id, resource=resource, actor=actor, action=action, since=utc(since),
                            limit=limit + 1, before_id=decode_cursor(cursor))
    page = rows[:limit]
    return AuditPage(items=[public(r) for r in page],
                     next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)
