"""Sync jobs' data: the provider records a connection's syncs have seen, and each sync's state.

``synced_records`` holds one row per (connection, model, provider id): the latest payload, its
hash, the provider's time of that version (``changed_at``), when the hub first saw it and when its
content last changed. ``sync_state`` holds one row per (connection, model): the cursor the next page
is fetched from (advanced only in the transaction that stores the page), the run state, totals, the
current run's progress and the last error.

Writes are idempotent: storing the same page of the same run twice (an activity retried after its
commit) changes nothing and counts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow

STATES = ("idle", "running", "failing")  # "paused" is shown when ``paused`` is set and no run is active


def payload_hash(payload: dict) -> str:
    """SHA-256 of the payload's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class SyncedRecord(Base):
    """The latest version of one provider record seen by a sync."""

    __tablename__ = "synced_records"
    __table_args__ = (UniqueConstraint("connection_id", "model", "provider_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    provider_id: Mapped[str] = mapped_column(String(300))
    payload: Mapped[dict] = mapped_column(default=dict)
    hash: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime | None] = mapped_column(default=None)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SyncState(Base):
    """Where one (connection, model) sync stands."""

    __tablename__ = "sync_state"
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    cursor: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[str] = mapped_column(String(16), default="idle")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    last_success_at: Mapped[datetime | None] = mapped_column(default=None)
    records_seen: Mapped[int] = mapped_column(Integer, default=0)
    records_changed: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(String(200), default=None)
    run_started_at: Mapped[datetime | None] = mapped_column(default=None)
    run_finished_at: Mapped[datetime | None] = mapped_column(default=None)
    run_pages: Mapped[int] = mapped_column(Integer, default=0)
    run_records: Mapped[int] = mapped_column(Integer, default=0)
    run_changed: Mapped[int] = mapped_column(Integer, default=0)
    run_events: Mapped[int] = mapped_column(Integer, default=0)
    run_rate: Mapped[float] = mapped_column(Float, default=0.0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def display_state(self) -> str:
        """idle, running, paused or failing (a paused sync with a run still going shows running)."""
        if self.state != "running" and self.paused:
            return "paused"
        return self.state


def new_page_id() -> str:
    """A fresh staged-page id, e.g. ``spg_3f9a0c1b2d4e6f70``."""
    return f"spg_{secrets.token_hex(8)}"


class SyncPage(Base):
    """A page fetched from the provider and not yet stored, for runs from before segments (a segment stores the
    pages it fetches itself): written by ``sync.fetch_page``, consumed by ``sync.store_page``.

    Pages stay out of Temporal histories this way; a page whose run ends without storing it is dropped
    when that run ends (or when the next run of the sync begins).
    """

    __tablename__ = "sync_pages"
    __table_args__ = (Index("ix_sync_pages_connection_id", "connection_id", "model", "run_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_page_id)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    run_id: Mapped[str] = mapped_column(String(200))
    cursor: Mapped[str | None] = mapped_column(Text, default=None)
    page: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


async def stage_page(session: AsyncSession, connection_id: str, model: str, run_id: str, cursor: str | None,
                     page: dict) -> str:
    """Keep a fetched page until it is stored; returns its id."""
    row = SyncPage(connection_id=connection_id, model=model, run_id=run_id, cursor=cursor, page=page)
    session.add(row)
    await session.flush()
    return row.id


async def take_page(session: AsyncSession, page_id: str, connection_id: str, model: str) -> SyncPage | None:
    """A staged page of this sync, deleted with the caller's transaction (None if unknown)."""
    row = await session.get(SyncPage, page_id)
    if row is None or row.connection_id != connection_id or row.model != model:
        return None
    await session.delete(row)
    return row


async def drop_pages(session: AsyncSession, connection_id: str, model: str, run_id: str | None = None,
                     *, exclude_run: str | None = None) -> int:
    """Delete the staged pages of a sync: of run ``run_id``, or of every run but ``exclude_run``."""
    query = delete(SyncPage).where(SyncPage.connection_id == connection_id, SyncPage.model == model)
    if run_id is not None:
        query = query.where(SyncPage.run_id == run_id)
    if exclude_run is not None:
        query = query.where(SyncPage.run_id != exclude_run)
    return (await session.execute(query)).rowcount  # type: ignore[attr-defined]  # DML: a CursorResult


@dataclass(frozen=True)
class RecordVersion:
    """One record as a provider page returned it; ``changed_at`` is the provider's time of this version."""

    provider_id: str
    payload: dict
    changed_at: datetime | None = None


@dataclass(frozen=True)
class Change:
    """A record that is new or whose content changed; ``previous`` is the payload it replaced."""

    provider_id: str
    payload: dict
    previous: dict | None
    changed_at: datetime | None

    @property
    def is_new(self) -> bool:
        """Never seen before."""
        return self.previous is None


@dataclass
class UpsertResult:
    """What storing one page did."""

    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    stale: int = 0  # older than the stored version (provider time), so not applied

    @property
    def new(self) -> int:
        """Records seen for the first time."""
        return sum(1 for c in self.changes if c.is_new)

    @property
    def changed(self) -> int:
        """Known records whose content changed."""
        return sum(1 for c in self.changes if not c.is_new)


def _newer(incoming: datetime | None, stored: datetime | None) -> bool:
    """Whether a version should replace the stored one: unknown times always apply, else strictly newer."""
    return incoming is None or stored is None or incoming > stored


async def upsert_records(
    session: AsyncSession, org_id: str, connection_id: str, model: str, records: Sequence[RecordVersion]
) -> UpsertResult:
    """Insert new records, update changed ones (newest provider version wins), count the rest.

    Set-based: one select per 500 ids, one multi-row insert, one executemany per kind of update.
    """
    result = UpsertResult()
    table = SyncedRecord.__table__
    ids = list(dict.fromkeys(r.provider_id for r in records))
    known: dict[str, dict] = {}
    for start in range(0, len(ids), 500):
        found = await session.execute(
            select(table.c.id, table.c.provider_id, table.c.hash, table.c.changed_at, table.c.payload).where(
                table.c.connection_id == connection_id, table.c.model == model,
                table.c.provider_id.in_(ids[start:start + 500]))
        )
        known.update({row.provider_id: row._asdict() for row in found})
    now = utcnow()
    inserts: dict[str, dict] = {}
    content: dict[int, dict] = {}
    times: dict[int, dict] = {}
    for record in records:
        digest = payload_hash(record.payload)
        current = known.get(record.provider_id)
        if current is not None and not _newer(record.changed_at, current["changed_at"]):
            result.stale += 1
            continue
        if current is not None and current["hash"] == digest:
            result.unchanged += 1
            if record.changed_at is not None and current["id"] is not None:
                current["changed_at"] = record.changed_at
                times[current["id"]] = {"rid": current["id"], "changed_at": record.changed_at}
            continue
        changed_at = record.changed_at or (current or {}).get("changed_at")
        result.changes.append(Change(record.provider_id, record.payload, current and current["payload"],
                                     record.changed_at))
        if current is None or current["id"] is None:  # new (or changed again within this page)
            inserts[record.provider_id] = {
                "org_id": org_id, "connection_id": connection_id, "model": model, "provider_id": record.provider_id,
                "payload": record.payload, "hash": digest, "changed_at": changed_at, "first_seen_at": now,
                "last_changed_at": now,
            }
            known[record.provider_id] = {"id": None, "hash": digest, "changed_at": changed_at,
                                         "payload": record.payload}
        else:
            current.update(hash=digest, changed_at=changed_at, payload=record.payload)
            content[current["id"]] = {"rid": current["id"], "payload": record.payload, "hash": digest,
                                      "changed_at": changed_at, "last_changed_at": now}
            times.pop(current["id"], None)
    if inserts:
        await session.execute(insert(table), list(inserts.values()))
    if content:
        await session.execute(
            update(table).where(table.c.id == bindparam("rid")).values(
                payload=bindparam("payload"), hash=bindparam("hash"), changed_at=bindparam("changed_at"),
                last_changed_at=bindparam("last_changed_at")),
            list(content.values()))
    if times:
        await session.execute(update(table).where(table.c.id == bindparam("rid"))
                              .values(changed_at=bindparam("changed_at")), list(times.values()))
    return result


async def get_state(session: AsyncSession, connection_id: str, model: str) -> SyncState | None:
    """One sync's state, or None if it never ran."""
    return await session.get(SyncState, (connection_id, model))


async def ensure_state(session: AsyncSession, org_id: str, connection_id: str, model: str) -> SyncState:
    """The sync's state row, created idle if absent."""
    state = await get_state(session, connection_id, model)
    if state is None:
        state = SyncState(org_id=org_id, connection_id=connection_id, model=model)
        session.add(state)
        await session.flush()
    return state


async def list_states(session: AsyncSession, connection_id: str) -> list[SyncState]:
    """Every sync state of a connection, by model."""
    rows = await session.scalars(
        select(SyncState).where(SyncState.connection_id == connection_id).order_by(SyncState.model)
    )
    return list(rows)


async def count_records(session: AsyncSession, connection_id: str) -> dict[str, int]:
    """How many records each model of a connection holds."""
    rows = await session.execute(
        select(SyncedRecord.model, func.count())
        .where(SyncedRecord.connection_id == connection_id)
        .group_by(SyncedRecord.model)
    )
    return {model: count for model, count in rows.all()}


async def get_record(session: AsyncSession, connection_id: str, model: str, provider_id: str) -> SyncedRecord | None:
    """One stored record."""
    return await session.scalar(
        select(SyncedRecord).where(
            SyncedRecord.connection_id == connection_id,
            SyncedRecord.model == model,
            SyncedRecord.provider_id == provider_id,
        )
    )


class CursorConflict(Exception):
    """A page does not continue from the stored cursor (another run moved it): nothing is stored."""


async def lock_state(session: AsyncSession, org_id: str, connection_id: str, model: str) -> SyncState:
    """The sync's state row (created idle if absent), locked for this transaction on PostgreSQL (SQLite
    serialises writers anyway)."""
    state = await session.get(SyncState, (connection_id, model), with_for_update=True, populate_existing=True)
    return state or await ensure_state(session, org_id, connection_id, model)


async def begin_run(session: AsyncSession, org_id: str, connection_id: str, model: str, run_id: str) -> SyncState:
    """Mark a run as started (idempotent for the same ``run_id``): progress counters reset, state running."""
    state = await lock_state(session, org_id, connection_id, model)
    if state.run_id != run_id:
        state.run_id, state.run_started_at, state.run_finished_at = run_id, utcnow(), None
        state.run_pages = state.run_records = state.run_changed = state.run_events = 0
        state.run_rate = 0.0
    if state.run_finished_at is None:
        state.state = "running"
    return state


def page_applied(state: SyncState, run_id: str, page_no: int) -> bool:
    """Whether page ``page_no`` of run ``run_id`` is already stored (a retried store must do nothing)."""
    return state.run_id == run_id and state.run_pages >= page_no


def ensure_follows(state: SyncState, run_id: str, page_no: int, cursor_in: str | None) -> None:
    """``CursorConflict`` unless page ``page_no`` of ``run_id``, fetched from ``cursor_in``, is the next to store."""
    if state.run_id != run_id or page_no != state.run_pages + 1 or state.cursor != cursor_in:
        raise CursorConflict(
            f"page {page_no} of run {run_id} does not follow the stored cursor of {state.model} "
            f"(run {state.run_id}, {state.run_pages} pages stored)"
        )


def advance_cursor(
    state: SyncState, run_id: str, page_no: int, cursor_in: str | None, next_cursor: str | None,
    seen: int, changed: int, events: int,
) -> None:
    """Move the cursor past a stored page and count it; ``CursorConflict`` if the page does not follow on."""
    ensure_follows(state, run_id, page_no, cursor_in)
    now = utcnow()
    state.cursor = next_cursor
    state.run_pages = page_no
    state.run_records += seen
    state.run_changed += changed
    state.run_events += events
    state.records_seen += seen
    state.records_changed += changed
    elapsed = (now - state.run_started_at).total_seconds() if state.run_started_at else 0.0
    state.run_rate = round(state.run_records / elapsed, 3) if elapsed > 0 else 0.0


def finish_run(state: SyncState, run_id: str) -> bool:
    """Record a successful run (once per run); returns whether this call recorded it."""
    if state.run_id != run_id or state.run_finished_at is not None:
        return False
    now = utcnow()
    state.state, state.run_finished_at, state.last_success_at = "idle", now, now
    state.consecutive_failures = 0
    return True


def fail_run(state: SyncState, run_id: str, error: str) -> bool:
    """Record a failed run (once per run): state failing, one more consecutive failure, the error kept."""
    if state.run_id != run_id or state.run_finished_at is not None:
        return False
    now = utcnow()
    state.state, state.run_finished_at = "failing", now
    state.consecutive_failures += 1
    state.last_error, state.last_error_at = error[:2000], now
    return True
