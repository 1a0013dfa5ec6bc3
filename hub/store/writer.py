"""Short write transactions on SQLite, run on the event loop itself on a connection of their own.

aiosqlite runs every call on its connection's thread, and a write transaction there holds SQLite's single write
lock from its first statement to its commit across several hand-offs, each waiting for a turn of a busy event
loop: in ``bench/import.py`` the hub's write transactions held the lock ≈ 11 ms each for ≈ 0.3 ms of SQLite work,
and every other writer waited behind them (120–160 ms per write), which capped the whole hub. A transaction run
here takes the lock, writes and commits in one go, without letting the loop turn, so the lock is held only for
the work itself (the inbox's group commit and the opportunity path's per-request writes use it).

Nothing here may block the loop for long: its transactions begin with ``BEGIN IMMEDIATE`` on a connection that
never waits for the lock (``busy_timeout=0``); another writer holding it makes the transaction try again a
millisecond later, for up to ``LOCK_WAIT`` seconds. The WAL checkpoints, which fsync, run in the background
on a thread every ``CHECKPOINT_ROWS`` rows written here instead of inside a commit (``synchronous=NORMAL`` as on
every hub connection: a commit is durable across a crash of the process). Each checkpoint also starts the WAL
over: a passive checkpoint alone never catches up with writes that never pause, and then the WAL grows without
end — and every commit appending to a growing file cost 3-4x one that rewrites the WAL's first blocks
(``bench/webhooks.py``: 35 against 9 µs of the commit per row).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

if TYPE_CHECKING:
    from hub.store import Database

log = logging.getLogger("hub.store")
LOCK_RETRY = 0.001
LOCK_WAIT = 10.0
CHECKPOINT_ROWS = 1000
RESTART_WAIT = 0.1  # seconds a WAL restart may hold writers back while readers finish with the WAL
T = TypeVar("T")


def _never_block(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI hook signature
    dbapi_conn.isolation_level = None  # transactions begin as the "begin" hook says: taking the write lock or failing
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _begin_immediate(conn: sa.Connection) -> None:
    try:  # on the driver itself: SQLAlchemy's execution machinery cost more than the statement
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # as SQLAlchemy would raise it ("database is locked" is retried)
        raise sa.exc.DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc


def locked(exc: sa.exc.OperationalError) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (or busy)."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class InlineWriter:
    """Write transactions on a SQLite file run on the event loop (see the module doc): ``Database.write``."""

    def __init__(self, db: Database, pragmas: Callable) -> None:
        self.db = db
        self.engine = sa.create_engine(
            db.engine.url.set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0,
            connect_args={"check_same_thread": False},
        )  # fmt: skip
        sa.event.listen(self.engine, "connect", pragmas)  # the hub's, then the ones below
        sa.event.listen(self.engine, "connect", _never_block)
        sa.event.listen(self.engine, "begin", _begin_immediate)
        sa.event.listen(db.engine.sync_engine, "engine_disposed", lambda _: self.engine.dispose())
        self._unchecked = 0
        self._checkpoint: asyncio.Task | None = None

    async def run(self, fn: Callable[..., T], *args: Any, rows: int = 1) -> T:
        """``fn(conn, *args)`` in one committed transaction (``rows``: how many rows it writes, for the WAL)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        while True:
            try:
                with self.engine.begin() as conn:
                    result = fn(conn, *args)
                break
            except sa.exc.OperationalError as exc:
                if not locked(exc) or loop.time() > deadline:
                    raise
            await asyncio.sleep(LOCK_RETRY)
        self._unchecked += rows
        if self._unchecked >= CHECKPOINT_ROWS and (self._checkpoint is None or self._checkpoint.done()):
            self._unchecked = 0
            self._checkpoint = asyncio.create_task(self._wal_checkpoint())
        return result

    async def _wal_checkpoint(self) -> None:
        try:
            await asyncio.to_thread(self._checkpoint_and_restart)
        except Exception:  # the next one catches up; other connections checkpoint too
            log.warning("WAL checkpoint failed", exc_info=True)

    def _checkpoint_and_restart(self) -> None:
        """Copy the WAL into the database file while writers go on (PASSIVE), then copy what they wrote meanwhile
        and start the WAL over (RESTART: writers wait for that and its sync; readers still on the WAL are waited
        for ``RESTART_WAIT`` at most, after which the WAL starts over at a later checkpoint)."""
        with closing(sqlite3.connect(self.engine.url.database, timeout=RESTART_WAIT)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.execute("PRAGMA wal_checkpoint(RESTART)")
