"""The intake's group-commit writer and credential cache, below the HTTP layer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hub.runtime import Hub
from hub.store import Database
from hub.store import writer as writer_module
from hub.store.base import utcnow
from hub.store.inbox import NewEvent, WebhookEvent, new_event_id
from tests.webhooks.conftest import make_connection
from webhooks.inbox import CredentialCache, InboxWriter, insert_rows

BODY = b'{"id": "evt", "pad": "' + b"x" * 4000 + b'"}'


async def _stored(db: Database) -> int:
    async with db.session() as session:
        return await session.scalar(select(func.count()).select_from(WebhookEvent))


def _event(name: str) -> NewEvent:
    return NewEvent("acme", "con_1", "stripe", name, "invoice.paid", {"content-type": "application/json"}, BODY,
                    "application/json")  # fmt: skip


async def test_every_concurrent_submission_is_committed_and_answered(db: Database) -> None:
    writer = InboxWriter(db)

    async def sender(n: int) -> list[bool]:
        flags = []
        for i in range(25):  # each sender submits again as soon as its batch is answered
            flags += await writer.submit([_event(f"evt_{n}_{i}"), _event(f"evt_{n}_{i}")])
        return flags

    results = await asyncio.gather(*(sender(n) for n in range(32)))
    assert all(flags == [True, False] * 25 for flags in results)  # the second copy is the duplicate
    assert await _stored(db) == 32 * 25
    assert await writer.submit([_event("evt_0_0")]) == [False]


async def test_sqlite_writer_waits_for_another_writer_without_blocking_the_loop(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite's single-writer lock")
    writer = InboxWriter(db)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    clock = asyncio.create_task(ticker())
    async with db.engine.begin() as other:  # another writer holds SQLite's write lock ...
        await other.run_sync(insert_rows, [_event("evt_other")])
        pending = asyncio.create_task(writer.submit([_event("evt_waiting")]))
        await asyncio.sleep(0)  # the submission starts waiting for the lock
        waiting_since = ticks
        await asyncio.sleep(0.2)
        assert not pending.done() and ticks > waiting_since  # ... the batch waits, and the loop runs meanwhile
    assert await pending == [True]
    clock.cancel()
    assert await _stored(db) == 2


async def test_rows_read_back_the_same_whichever_writer_stored_them(db: Database) -> None:
    writer = InboxWriter(db)  # on SQLite: its own DBAPI insert; on PostgreSQL: SQLAlchemy's
    before = utcnow()
    assert await writer.submit([_event("evt_via_writer")]) == [True]
    async with db.engine.begin() as conn:
        await conn.run_sync(insert_rows, [_event("evt_via_core")])
    after = utcnow()
    async with db.session() as session:
        rows = {r.event_id: r for r in await session.scalars(select(WebhookEvent))}
    ours, core = rows["evt_via_writer"], rows["evt_via_core"]
    fields = ("org_id", "connection_id", "provider", "event_type", "headers", "body", "content_type", "status",
              "attempts", "generation", "errors", "domain_types", "outcome", "last_error", "workflow_id")
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(core, f) for f in fields}
    assert ours.headers == {"content-type": "application/json"} and ours.body == BODY and ours.status == "pending"
    assert ours.received_at == ours.available_at and before <= ours.received_at <= core.received_at <= after


async def test_a_failing_sqlite_insert_raises_as_sqlalchemy_does(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("the SQLite writer's own insert")
    writer = InboxWriter(db)
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE webhook_events")
    with pytest.raises(OperationalError, match="no such table"):  # the receiver answers 503 for these
        await writer.submit([_event("evt_lost")])


async def test_sqlite_wal_is_checkpointed_in_the_background(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite's write-ahead log")
    monkeypatch.setattr(writer_module, "CHECKPOINT_ROWS", 20)
    writer = InboxWriter(db)
    wal = Path(db.engine.url.database + "-wal")
    for n in range(40):
        await asyncio.gather(*(writer.submit([_event(f"evt_{n}_{i}")]) for i in range(10)))
        await asyncio.sleep(0.01)  # give the background checkpoint its turn
    # 400 rows of 4 kB would need over 1.6 MB of WAL; checkpointed, the WAL starts over and stays small
    assert wal.stat().st_size < 1_000_000


async def test_sqlite_wal_starts_over_under_writes_that_never_pause(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite's write-ahead log")
    monkeypatch.setattr(writer_module, "CHECKPOINT_ROWS", 50)
    writer = InboxWriter(db)
    wal = Path(db.engine.url.database + "-wal")
    for n in range(400):  # never a pause as long as a checkpoint takes
        await asyncio.gather(*(writer.submit([_event(f"evt_{n}_{i}")]) for i in range(10)))
        await asyncio.sleep(0.001)
    assert await _stored(db) == 4000
    # 4,000 rows of 4 kB are over 16 MB of WAL: a passive checkpoint alone never caught up, and the WAL grew to that
    assert wal.stat().st_size < 5_000_000, f"the WAL grew to {wal.stat().st_size} bytes"


async def test_concurrent_requests_for_one_connection_read_its_credentials_once(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = await make_connection(hub, "stripe")
    cache = CredentialCache(hub.db, hub.vault)
    reads = 0
    load = cache._load

    async def counted(connection_id: str):
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        return await load(connection_id)

    monkeypatch.setattr(cache, "_load", counted)
    # the first read may import every provider's module (over a second when this test runs alone): the reload's age
    # is measured from before the read
    monkeypatch.setattr("webhooks.inbox.RELOAD_AFTER", 30.0)
    results = await asyncio.gather(*(cache.get(con) for _ in range(20)))
    assert reads == 1 and {r[0].connection_id for r in results} == {con}
    assert await cache.get(con) == (results[0][0], False)  # cached now
    fresh, reloaded = await cache.get(con, reload=True)  # younger than RELOAD_AFTER: not read again
    assert reads == 1 and not reloaded


def test_inbox_ids_are_unique_and_ordered_by_the_time_they_were_made() -> None:
    ids = []
    for _ in range(3):
        ids += [new_event_id() for _ in range(5_000)]
        time.sleep(0.002)
    assert len(set(ids)) == len(ids) and all(len(i) <= 32 for i in ids)  # the column holds 32
    stamps = [i[4:15] for i in ids]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]  # side by side in the primary key's index
