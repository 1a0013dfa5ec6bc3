"""The webhook inbox: every verified event, committed before it is acknowledged, until it is processed.

A row's life: ``pending`` (waiting for the relay) → ``relayed`` (its WebhookEventWorkflow started)
→ ``done``; or ``pending`` → ``ignored`` (nothing to do, finished without a workflow). A failed
processing attempt puts the row back to ``pending`` after a back-off, and after
``max_attempts`` failures it is ``dead`` (dead-lettered, with its reason; still replayable).

Rows are unique on (provider, connection, provider event id): a re-delivery is a duplicate.
Finished rows are kept ``retention`` (at least 7 days) and then purged; unfinished rows are never.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import (
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow

FAILURES = Counter(
    "hub_webhooks_processing_failures_total", "Failed processing attempts, by resulting status", ["status"]
)

STATUSES = ("pending", "relayed", "done", "ignored", "dead")
FINISHED = ("done", "ignored")
RETENTION = timedelta(days=7)
FAILURE_BACKOFF = timedelta(seconds=30)  # before the first retry of a row whose processing failed
HUB_CONNECTION = "hub"  # the connection id of events the hub raises itself (``lead.created``)
HUB_PROVIDER = "generic"  # their provider: Standard Webhooks events, mapped by the scheme of that name


def new_event_id() -> str:
    """A fresh inbox id, time-ordered: the milliseconds since the epoch, then 48 random bits, e.g.
    ``whe_19ae4f3c2b1a3f9c0d2e7b4`` (ids of one moment land side by side in the primary key's index instead of all
    over it: a busy inbox writes about a quarter less to the database per event, and that share does not grow with
    the table)."""
    return f"whe_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(6)}"


class WebhookEvent(Base):
    """One provider event as received (raw body, headers without secrets) and its processing state."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "connection_id", "event_id", name="uq_webhook_events_provider_event"),
        Index("ix_webhook_events_status_available", "status", "available_at"),
        Index("ix_webhook_events_org_received", "org_id", "received_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_event_id)
    org_id: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(200))
    domain_types: Mapped[list] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list] = mapped_column(default=list)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    headers: Mapped[dict] = mapped_column(default=dict)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(200), default="")
    outcome: Mapped[dict] = mapped_column(default=dict)
    workflow_id: Mapped[str | None] = mapped_column(String(400), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    relayed_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


@dataclass(frozen=True)
class NewEvent:
    """What the receiver stores for one accepted event."""

    org_id: str
    connection_id: str
    provider: str
    event_id: str
    event_type: str
    headers: dict
    body: bytes
    content_type: str

    @property
    def key(self) -> tuple[str, str, str]:
        """The dedupe key."""
        return (self.provider, self.connection_id, self.event_id)


_INSERTS: dict[str, object] = {}


def insert_statement(dialect: str):  # noqa: ANN201 - dialect-specific Insert
    """INSERT … ON CONFLICT DO NOTHING RETURNING the key: one statement per dialect, compiled once."""
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        table = WebhookEvent.__table__
        stmt = _INSERTS[dialect] = (
            (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            .on_conflict_do_nothing(index_elements=["provider", "connection_id", "event_id"])
            .returning(table.c.provider, table.c.connection_id, table.c.event_id)
        )
    return stmt


def new_row_values(events: Sequence[NewEvent]) -> tuple[dict, list[dict]]:
    """The column values of new pending rows for ``events``: those every row of the batch shares (its moment, the
    initial state), and each event's own."""
    now = utcnow()
    shared = {"status": "pending", "attempts": 0, "generation": 0, "errors": [], "domain_types": [], "outcome": {},
              "received_at": now, "available_at": now}  # fmt: skip
    own = [
        {
            "id": new_event_id(), "org_id": e.org_id, "connection_id": e.connection_id, "provider": e.provider,
            "event_id": e.event_id, "event_type": e.event_type, "headers": e.headers, "body": e.body,
            "content_type": e.content_type,
        }
        for e in events
    ]  # fmt: skip
    return shared, own


def new_rows(events: Sequence[NewEvent]) -> list[dict]:
    """The column values of new pending rows for ``events``."""
    shared, own = new_row_values(events)
    return [{**row, **shared} for row in own]


async def insert_new(session: AsyncSession, events: Sequence[NewEvent]) -> set[tuple[str, str, str]]:
    """Insert events, skipping those already stored; returns the keys actually inserted."""
    if not events:
        return set()
    conn = await session.connection()
    result = await conn.execute(insert_statement(session.bind.dialect.name), new_rows(events))
    return {tuple(r) for r in result.all()}


async def claim(session: AsyncSession, owner: str, limit: int, lease: timedelta) -> list[WebhookEvent]:
    """Lease up to ``limit`` due pending rows to ``owner`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), the orgs
    taking turns: each org's oldest due row first, then each one's second, and so on, so that one org's backlog
    (a flood, a replay of thousands) delays another org's events by one turn, not by the whole backlog."""
    now = utcnow()
    due = (
        select(
            WebhookEvent.id, WebhookEvent.available_at,
            func.row_number().over(partition_by=WebhookEvent.org_id, order_by=WebhookEvent.available_at).label("turn"),
        )
        .where(
            WebhookEvent.status == "pending",
            WebhookEvent.available_at <= now,
            or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
        )
        .subquery()
    )  # fmt: skip
    # twice the rows wanted, in turn order (a scan of every due row: a claim behind a backlog of 50,000 took 54 ms on
    # PostgreSQL and 94 ms on SQLite, against 39 and 17 ms oldest-first); then locked in that order, another relay's
    # locked rows skipped for the next ones
    turns = select(due).order_by(due.c.turn, due.c.available_at).limit(2 * limit).subquery()
    ids = (
        await session.scalars(
            select(WebhookEvent.id)
            .join(turns, turns.c.id == WebhookEvent.id)
            .order_by(turns.c.turn, turns.c.available_at)
            .limit(limit)
            .with_for_update(of=WebhookEvent, skip_locked=True)
        )
    ).all()
    if not ids:
        return []
    claimed = (
        await session.scalars(
            update(WebhookEvent)
            .where(
                WebhookEvent.id.in_(ids),
                WebhookEvent.status == "pending",
                or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
            )
            .values(lease_owner=owner, lease_until=now + lease)
            .returning(WebhookEvent.id)
        )
    ).all()
    if not claimed:
        return []
    rows = (await session.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(claimed)))).all()
    return sorted(rows, key=lambda r: r.available_at)


async def claim_stuck(session: AsyncSession, owner: str, limit: int, lease: timedelta) -> list[WebhookEvent]:
    """Lease relayed rows whose check-back time has passed (their workflow may have died)."""
    now = utcnow()
    ids = (
        await session.scalars(
            select(WebhookEvent.id)
            .where(WebhookEvent.status == "relayed", WebhookEvent.lease_until < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not ids:
        return []
    claimed = (
        await session.scalars(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_(ids), WebhookEvent.status == "relayed", WebhookEvent.lease_until < now)
            .values(lease_owner=owner, lease_until=now + lease)
            .returning(WebhookEvent.id)
        )
    ).all()
    return list((await session.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(claimed)))).all())


async def mark_relayed(
    session: AsyncSession, row_id: str, owner: str, workflow_id: str, domain_types: list[str], check_after: timedelta
) -> bool:
    """A pending row leased by ``owner`` now has a workflow; False if the row moved on meanwhile."""
    now = utcnow()
    result = await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == row_id, WebhookEvent.status == "pending", WebhookEvent.lease_owner == owner)
        .values(
            status="relayed", workflow_id=workflow_id, domain_types=domain_types, relayed_at=now,
            lease_owner=None, lease_until=now + check_after,
        )
    )  # fmt: skip
    return result.rowcount == 1  # type: ignore[attr-defined]  # DML: a CursorResult


async def release(session: AsyncSession, row_ids: Sequence[str], owner: str, delay: timedelta) -> None:
    """Give leased pending rows back (Temporal unreachable): due again after ``delay``."""
    if not row_ids:
        return
    await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(row_ids), WebhookEvent.lease_owner == owner, WebhookEvent.status == "pending")
        .values(lease_owner=None, lease_until=None, available_at=utcnow() + delay)
    )


async def finish(
    session: AsyncSession, row_id: str, status: str, outcome: dict, domain_types: list[str] | None = None,
    generation: int | None = None,
) -> bool:
    """Mark a row ``done`` or ``ignored`` with its outcome; False if it was already finished or superseded."""
    if status not in FINISHED:
        raise ValueError(f"finish() takes one of {FINISHED}, not {status!r}")
    now = utcnow()
    values: dict = {"status": status, "outcome": outcome, "completed_at": now, "lease_owner": None,
                    "lease_until": None}
    if domain_types is not None:
        values["domain_types"] = domain_types
    cond = [WebhookEvent.id == row_id, WebhookEvent.status.in_(("pending", "relayed"))]
    if generation is not None:
        cond.append(WebhookEvent.generation == generation)
    result = await session.execute(update(WebhookEvent).where(*cond).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined]  # DML: a CursorResult


async def record_failure(
    session: AsyncSession, row_id: str, error: str, generation: int, max_attempts: int
) -> str | None:
    """Count a failed processing attempt (and the ``hub_webhooks_processing_failures_total`` metric): back to
    ``pending`` after ``FAILURE_BACKOFF`` (doubling with each attempt), or ``dead`` after ``max_attempts``. The one
    failure path of an inbox row, for the relay and the workflow's activity alike.

    Returns the new status, or None if the row had moved on (another generation, already finished).
    """
    row = await session.scalar(
        select(WebhookEvent).where(WebhookEvent.id == row_id).with_for_update()
    )
    if row is None or row.generation != generation or row.status not in ("pending", "relayed"):
        return None
    now = utcnow()
    row.attempts += 1
    row.errors = [*row.errors, {"at": now.isoformat(), "attempt": row.attempts, "error": error[:2000]}][-20:]
    row.last_error = error[:2000]
    row.lease_owner, row.lease_until = None, None
    row.generation += 1
    if row.attempts >= max_attempts:
        row.status, row.completed_at = "dead", now
    else:
        row.status, row.available_at = "pending", now + FAILURE_BACKOFF * (2 ** (row.attempts - 1))
    FAILURES.labels(row.status).inc()
    return row.status


async def replay(session: AsyncSession, row: WebhookEvent) -> None:
    """Queue a finished or dead row again as a new generation (attempts start again)."""
    row.status, row.attempts, row.generation = "pending", 0, row.generation + 1
    row.available_at, row.lease_owner, row.lease_until = utcnow(), None, None
    row.completed_at, row.relayed_at = None, None


async def purge(session: AsyncSession, retention: timedelta = RETENTION) -> int:
    """Delete finished rows received more than ``retention`` ago (never less than 7 days)."""
    cutoff = utcnow() - max(retention, RETENTION)
    result = await session.execute(
        delete(WebhookEvent).where(WebhookEvent.status.in_(FINISHED), WebhookEvent.received_at < cutoff)
    )
    return result.rowcount  # type: ignore[attr-defined]  # DML: a CursorResult


@dataclass(frozen=True)
class EventFilter:
    """Inbox list filters (all optional)."""

    provider: str | None = None
    status: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_events(
    session: AsyncSession, org_id: str, filt: EventFilter, limit: int, after: tuple[datetime, str] | None
) -> list[WebhookEvent]:
    """One org's events, newest first, keyset-paginated after ``(received_at, id)``."""
    q = select(WebhookEvent).where(WebhookEvent.org_id == org_id)
    if filt.provider:
        q = q.where(WebhookEvent.provider == filt.provider)
    if filt.status:
        q = q.where(WebhookEvent.status == filt.status)
    if filt.type:
        q = q.where(WebhookEvent.event_type == filt.type)
    if filt.since:
        q = q.where(WebhookEvent.received_at >= filt.since)
    if filt.until:
        q = q.where(WebhookEvent.received_at < filt.until)
    if after is not None:
        at, last_id = after
        q = q.where(or_(WebhookEvent.received_at < at, and_(WebhookEvent.received_at == at, WebhookEvent.id < last_id)))
    q = q.order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc()).limit(limit)
    return list((await session.scalars(q)).all())


async def received_between(
    session: AsyncSession, org_id: str, since: datetime, until: datetime, limit: int | None = None
) -> list[WebhookEvent]:
    """One org's events (at most ``limit``) received in ``[since, until)``, oldest first (finished ones are kept
    ``RETENTION``)."""
    q = select(WebhookEvent).where(
        WebhookEvent.org_id == org_id, WebhookEvent.received_at >= since, WebhookEvent.received_at < until
    )
    return list((await session.scalars(q.order_by(WebhookEvent.received_at, WebhookEvent.id).limit(limit))).all())


async def pending_lag(session: AsyncSession) -> datetime | None:
    """When the oldest event still waiting for the relay was received (None if none waits)."""
    return await session.scalar(
        select(WebhookEvent.received_at)
        .where(WebhookEvent.status == "pending")
        .order_by(WebhookEvent.received_at)
        .limit(1)
    )
