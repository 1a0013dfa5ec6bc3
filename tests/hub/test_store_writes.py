"""The store's write paths: ``Database.write`` (all or nothing, on both engines) and the SQLite adapter's one
thread hand-off per statement."""

from __future__ import annotations

import aiosqlite
import pytest
from sqlalchemy import Connection, func, insert, select, text, update

from hub.store import Database
from hub.store.orgs import IdempotencyRecord


def _claim(conn: Connection, key: str) -> str:
    conn.execute(insert(IdempotencyRecord), {"org_id": "acme", "key": key, "request_hash": "h", "status_code": 0,
                                             "response": {}})  # fmt: skip
    return key


def _claim_then_fail(conn: Connection, key: str) -> None:
    _claim(conn, key)
    raise RuntimeError("after the first statement")


async def _keys(db: Database) -> list[str]:
    async with db.session() as session:
        return list(await session.scalars(select(IdempotencyRecord.key).order_by(IdempotencyRecord.key)))


async def test_a_write_is_committed_whole_or_not_at_all(db: Database) -> None:
    assert await db.write(_claim, "k1") == "k1"  # the function's result
    with pytest.raises(RuntimeError, match="after the first statement"):
        await db.write(_claim_then_fail, "k2")
    assert await _keys(db) == ["k1"]  # the failed one's insert rolled back
    assert await db.write(_claim, "k3") == "k3"  # and nothing was left holding a lock
    assert await _keys(db) == ["k1", "k3"]


async def test_sqlite_takes_one_hand_off_per_statement_and_none_to_end_a_read(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db.is_sqlite:
        pytest.skip("aiosqlite's thread hand-offs")
    await db.write(_claim, "k1")
    calls = 0
    run = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn, *args, **kwargs):
        nonlocal calls
        calls += 1
        return await run(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    async with db.session() as session:  # warm: the pool's connection is open
        await session.scalar(select(func.count()).select_from(IdempotencyRecord))
    calls = 0
    async with db.session() as session:
        assert await session.scalar(select(IdempotencyRecord.key)) == "k1"
    assert calls == 1  # the statement with its rows; no commit, no reset: nothing had begun
    calls = 0
    async with db.session() as session:
        result = await session.execute(update(IdempotencyRecord).values(status_code=200))
        assert result.rowcount == 1
    assert calls == 2  # the update, then its commit
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT 1 UNION ALL SELECT 2"))
        assert rows.all() == [(1,), (2,)]


async def test_sqlite_session_that_fails_mid_write_is_rolled_back(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("the SQLite adapter's rollback")
    with pytest.raises(RuntimeError):
        async with db.session() as session:
            session.add(IdempotencyRecord(org_id="acme", key="lost", request_hash="h", status_code=0, response={}))
            await session.flush()  # the write transaction is open ...
            raise RuntimeError("before the commit")
    assert await _keys(db) == []  # ... and was rolled back, releasing SQLite's lock for the next writer
    assert await db.write(_claim, "next") == "next"
