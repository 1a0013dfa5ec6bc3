"""SQLite under asyncio with one thread hand-off per statement.

aiosqlite runs each SQLite call on its connection's thread, and every call is a hand-off: the event loop
queues it, the thread runs it and wakes the loop through its self-pipe (≈ 0.1 ms of CPU each, and a turn of the
loop to wait for). SQLAlchemy's aiosqlite adapter makes three or four per statement (cursor, execute, fetch,
close) and one for every commit and pool reset, even when no transaction is open (a read-only session). This
adapter runs a statement's execute, fetch and close as one call on the thread, and skips a commit or rollback
with no transaction open (SQLite's ``in_transaction``, a flag that may be read from any thread): a
three-session round trip costs half the CPU it did. Everything else is SQLAlchemy's ``sqlite+aiosqlite``
dialect unchanged; the engine gets this as its DBAPI module (``dbapi()``). Short writes on a hot path go
through ``Database.write`` instead (``hub.store.writer``).
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> tuple:
    """On the connection's thread: the whole statement, rows included."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else None
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneCallCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement is one call on the connection's thread; its results are kept here."""

    __slots__ = ("_description", "_rowcount", "_lastrowid")

    def __init__(self, adapt_connection: OneCallConnection) -> None:  # no driver cursor: nothing to open
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._rows = collections.deque()
        self._description = None
        self._rowcount = -1
        self._lastrowid = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _call(self, operation: str, parameters: Any, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection
        async with self._adapt_connection._execute_mutex:
            self._description, self._rowcount, self._lastrowid, rows = await connection._execute(
                _run, connection._conn, operation, parameters, many
            )
        self._rows = collections.deque(rows or ())

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._call(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._call(operation, seq_of_parameters, True)

    async def _async_soft_close(self) -> None:
        return None  # the driver's cursor closed with its statement

    def close(self) -> None:
        self._rows.clear()


class OneCallConnection(AsyncAdapt_aiosqlite_connection):
    """aiosqlite's adapted connection with one-call cursors, and no hand-off to end a transaction never begun."""

    __slots__ = ()
    _cursor_cls = OneCallCursor

    def _in_transaction(self) -> bool:
        driver = self._connection._connection  # None once closed
        return driver is not None and driver.in_transaction

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()


class OneCallDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module the engine is given: aiosqlite connections behind ``OneCallConnection``."""

    def connect(self, *arg: Any, **kw: Any) -> OneCallConnection:
        adapted = super().connect(*arg, **kw)
        return OneCallConnection(self, adapted._connection)


def dbapi() -> OneCallDBAPI:
    """The module to pass as ``create_async_engine(..., module=dbapi())`` for a ``sqlite+aiosqlite`` URL."""
    return OneCallDBAPI(aiosqlite, sqlite3)
