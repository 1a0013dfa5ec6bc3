"""``/v1/webhook-events``: the webhook inbox of the caller's org — list, detail, replay."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from hub.deps import AdminKey, ReaderKey, SessionDep
from hub.problems import Problem
from hub.store import inbox
from hub.store.inbox import EventFilter, WebhookEvent
from hub.store.orgs import record_audit
from webhooks.router import intake

router = APIRouter(prefix="/v1/webhook-events", tags=["webhook-events"])
Status = Literal["pending", "relayed", "done", "ignored", "dead"]


class WebhookEventPublic(BaseModel):
    """An inbox event in a list."""

    id: str
    provider: str
    connection_id: str
    event_id: str
    event_type: str
    domain_types: list[str]
    status: str
    attempts: int
    last_error: str | None
    workflow_id: str | None
    received_at: datetime
    relayed_at: datetime | None
    completed_at: datetime | None


class WebhookEventDetail(WebhookEventPublic):
    """One inbox event in full: headers (without signatures or secrets), body, attempts and errors."""

    generation: int
    headers: dict[str, str]
    content_type: str
    body: str
    body_encoding: Literal["utf-8", "base64"]
    errors: list[dict]
    outcome: dict


class WebhookEventPage(BaseModel):
    """One page of events, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[WebhookEventPublic]
    next_cursor: str | None


def _public(row: WebhookEvent) -> dict:
    return {
        "id": row.id, "provider": row.provider, "connection_id": row.connection_id, "event_id": row.event_id,
        "event_type": row.event_type, "domain_types": row.domain_types, "status": row.status,
        "attempts": row.attempts, "last_error": row.last_error, "workflow_id": row.workflow_id,
        "received_at": row.received_at, "relayed_at": row.relayed_at,
        "completed_at": row.completed_at,
    }  # fmt: skip


def _detail(row: WebhookEvent) -> WebhookEventDetail:
    try:
        body, encoding = row.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(row.body).decode(), "base64"
    return WebhookEventDetail(
        **_public(row), generation=row.generation, headers=row.headers, content_type=row.content_type,
        body=body, body_encoding=encoding, errors=row.errors, outcome=row.outcome,
    )  # fmt: skip


def _encode_cursor(row: WebhookEvent) -> str:
    raw = json.dumps([row.received_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, last_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(last_id)
    except (ValueError, TypeError, binascii.Error):
        raise Problem(400, "invalid cursor") from None


async def _own(session: SessionDep, event_id: str, org_id: str) -> WebhookEvent:
    row = await session.get(WebhookEvent, event_id)
    if row is None or row.org_id != org_id:
        raise Problem(404, f"webhook event {event_id!r} not found")
    return row


@router.get("")
async def list_webhook_events(
    session: SessionDep,
    key: ReaderKey,
    provider: str | None = None,
    status: Status | None = None,
    type: Annotated[str | None, Query(description="the provider's event type, e.g. invoice.paid")] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> WebhookEventPage:
    """The org's inbox, newest first, filtered by provider, status, event type and time."""
    filt = EventFilter(provider=provider, status=status, type=type, since=since, until=until)
    after = _decode_cursor(cursor) if cursor else None
    rows = await inbox.list_events(session, key.org_id, filt, limit + 1, after)
    page = rows[:limit]
    return WebhookEventPage(
        items=[WebhookEventPublic(**_public(r)) for r in page],
        next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/{event_id}")
async def get_webhook_event(event_id: str, session: SessionDep, key: ReaderKey) -> WebhookEventDetail:
    """One event: headers without signatures or secrets, the body, processing attempts and errors."""
    return _detail(await _own(session, event_id, key.org_id))


@router.post("/{event_id}:replay", status_code=202)
async def replay_webhook_event(
    event_id: str, request: Request, session: SessionDep, key: AdminKey
) -> WebhookEventDetail:
    """Process a finished, ignored or dead-lettered event again (as a new generation)."""
    row = await _own(session, event_id, key.org_id)
    if row.status in ("pending", "relayed"):
        raise Problem(409, f"webhook event {event_id!r} is {row.status}; it can be replayed once it has finished")
    previous = row.status
    await inbox.replay(session, row)
    await record_audit(session, key.org_id, key.key_id, "webhook_event.replayed", f"webhook_event/{row.id}",
                       {"previous_status": previous, "generation": row.generation})
    await session.flush()
    intake(request).notify()  # a hint: the relay also polls
    return _detail(row)
