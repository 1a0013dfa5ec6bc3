"""The receiving side of the inbox: connection credentials (cached) and group-committed inserts."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from connectors.events import Credentials, for_provider
from hub.single_flight import single_flight
from hub.store import Database
from hub.store.connections import Connection, secret_owner
from hub.store.inbox import NewEvent, WebhookEvent, insert_statement, new_row_values, new_rows
from hub.store.secrets import get_secret
from hub.vault import Vault

log = logging.getLogger("hub.webhooks")
CACHE_TTL = 10.0
RELOAD_AFTER = 1.0
CACHE_SIZE = 10_000


@dataclass
class _Cached:
    creds: Credentials
    loaded: float


class CredentialCache:
    """Connections' webhook credentials (decrypted secrets: in memory only), cached for ``ttl`` seconds.

    A verification failure may call ``get(..., reload=True)``: credentials older than a second are
    read again, so a secret rotated a moment ago is honoured at once and a flood of bad
    signatures costs at most one read per connection per second. Concurrent requests for the same
    connection share one read. Unknown connections are not cached (a flood of made-up ids cannot
    grow the cache), and the cache holds at most ``CACHE_SIZE`` connections.
    """

    def __init__(self, db: Database, vault: Vault, ttl: float = CACHE_TTL) -> None:
        self.db, self.vault, self.ttl = db, vault, ttl
        self._entries: dict[str, _Cached] = {}
        self._reads: dict[str, asyncio.Future[Credentials | None]] = {}

    async def get(self, connection_id: str, reload: bool = False) -> tuple[Credentials | None, bool]:
        """The credentials (None for an unknown connection) and whether they were freshly read."""
        hit = self._entries.get(connection_id)
        if hit is not None and time.monotonic() - hit.loaded < (RELOAD_AFTER if reload else self.ttl):
            return hit.creds, False
        return await single_flight(self._reads, connection_id, lambda: self._read(connection_id)), True

    def forget(self, connection_id: str) -> None:
        """Drop a connection's cached credentials (it was just deleted or changed)."""
        self._entries.pop(connection_id, None)

    async def _read(self, connection_id: str) -> Credentials | None:
        loaded = time.monotonic()
        creds = await self._load(connection_id)
        if creds is None:
            self._entries.pop(connection_id, None)
        else:
            if connection_id not in self._entries and len(self._entries) >= CACHE_SIZE:
                self._entries.pop(next(iter(self._entries)))
            self._entries[connection_id] = _Cached(creds, loaded)
        return creds

    async def _load(self, connection_id: str) -> Credentials | None:
        async with self.db.session() as session:
            conn = await session.get(Connection, connection_id)
            if conn is None:
                return None
            owner = secret_owner(conn.id)

            async def secret(name: str) -> str:
                return await get_secret(session, self.vault, owner, name) or ""

            scheme = for_provider(conn.provider)
            key_name = scheme.public_key_name if scheme is not None else None
            keys = "" if key_name is None else str(conn.config.get(key_name) or "") + "\n" + await secret(key_name)
            return Credentials(
                connection_id=conn.id,
                org_id=conn.org_id,
                provider=conn.provider,
                status=conn.status,
                config=dict(conn.config),
                webhook_secrets=split_secrets(await secret("webhook_secrets")),
                client_states=split_secrets(await secret("client_state")),
                public_keys=pem_blocks(keys),
            )


def split_secrets(value: str | None) -> list[str]:
    """A newline-separated secret list (newest first) as a list, blank lines dropped."""
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


def pem_blocks(value: str) -> list[str]:
    """Split concatenated PEM public keys (several during Gong key rotation)."""
    marker = "-----END PUBLIC KEY-----"
    return [block.strip() + "\n" + marker for block in value.split(marker) if block.strip()]


class InboxWriter:
    """Commits inbox rows for concurrent requests together (group commit) and says which were new.

    A request's rows join the queue; a committer task takes every waiting request (up to
    ``max_batch`` rows) and commits their rows in one transaction, again and again while requests
    wait, and ends when none does. Nothing is acknowledged before its batch has committed.

    On PostgreSQL up to four committers run at once (the database dedupes across concurrent
    batches: the insert skips existing keys); SQLite has a single writer, so one runs there, through
    a ``SqliteWriter``.
    """

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db, self.max_batch = db, max_batch
        self.max_inflight = 1 if db.is_sqlite else 4
        self._sqlite = SqliteWriter(db) if db.inline is not None else None  # in-memory SQLite: the engine's alone
        self._queue: deque[tuple[Sequence[NewEvent], asyncio.Future]] = deque()
        self._committers = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, events: Sequence[NewEvent]) -> list[bool]:
        """Commit ``events``; for each, True if it is new, False if it was already in the inbox."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((events, future))
        if self._committers < self.max_inflight:
            self._committers += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        # The count drops in the same loop turn as the queue is found empty: a request queued after
        # that starts a committer of its own, so none is left waiting.
        try:
            await asyncio.sleep(0)  # let requests ready in this loop turn join the batch
            while self._queue:
                batch: list[tuple[Sequence[NewEvent], asyncio.Future]] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch):
                    item = self._queue.popleft()
                    batch.append(item)
                    size += len(item[0])
                await self._commit(batch)
        finally:
            self._committers -= 1

    async def _commit(self, batch: list[tuple[Sequence[NewEvent], asyncio.Future]]) -> None:
        unique: dict[tuple[str, str, str], NewEvent] = {}
        for events, _ in batch:
            for new in events:
                unique.setdefault(new.key, new)
        try:
            inserted = await self._insert(list(unique.values()))
        except Exception as exc:  # noqa: BLE001 - every waiting request learns of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        claimed: set[tuple[str, str, str]] = set()
        for events, future in batch:
            flags = []
            for new in events:
                flags.append(new.key in inserted and new.key not in claimed)
                claimed.add(new.key)
            if not future.done():
                future.set_result(flags)

    async def _insert(self, events: list[NewEvent]) -> set[tuple[str, str, str]]:
        if self._sqlite is not None:
            return await self._sqlite.insert(events)
        async with self.db.engine.begin() as conn:
            return await conn.run_sync(insert_rows, events)


def insert_rows(conn: sa.Connection, events: Sequence[NewEvent]) -> set[tuple[str, str, str]]:
    """Insert ``events`` (Core, one statement), skipping keys already stored; the keys inserted."""
    result = conn.execute(insert_statement(conn.dialect.name), new_rows(events))
    return {tuple(r) for r in result.all()}


class SqliteWriter:
    """The inbox's inserts on SQLite: one ``INSERT … ON CONFLICT DO NOTHING`` per event on the DBAPI cursor of
    ``Database.write``'s connection (its ``rowcount`` says whether the event was new), run on the event loop
    (``hub.store.writer``: aiosqlite's hand-offs, each waiting for the GIL behind request work, cost more than
    the insert itself: about 1.4x the accepted rate in ``bench/webhooks.py``). Each value is encoded by its
    column type's own bind processor (JSON through orjson), the values a batch's rows share once for the batch:
    SQLAlchemy's multi-row insert spent as long preparing a batch's parameters as SQLite spent storing them, while
    the whole event loop waited.
    """

    def __init__(self, db: Database) -> None:
        assert db.inline is not None
        self.db = db
        self._shared, self._own = (_encoders(db.inline.engine.dialect, names) for names in (_SHARED, _OWN))

    async def insert(self, events: Sequence[NewEvent]) -> set[tuple[str, str, str]]:
        """Insert and commit ``events``; the keys inserted."""
        return await self.db.write(self._insert_rows, events, rows=len(events))

    def _insert_rows(self, conn: sa.Connection, events: Sequence[NewEvent]) -> set[tuple[str, str, str]]:
        shared, own = new_row_values(events)
        head = [encode(shared[name]) for name, encode in self._shared]  # once for the batch
        cursor = conn.connection.cursor()
        inserted = set()
        try:
            for new, row in zip(events, own, strict=True):
                params = head + [encode(row[name]) for name, encode in self._own]
                cursor.execute(SQLITE_INSERT, params)
                if cursor.rowcount == 1:
                    inserted.add(new.key)
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (the lock check and the 503 expect that)
            raise sa.exc.DBAPIError.instance(SQLITE_INSERT, params, exc, sqlite3.Error) from exc
        finally:
            cursor.close()
        return inserted


def _columns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns a new row sets: those its batch shares, and its own."""
    shared, own = new_row_values([NewEvent("", "", "", "", "", {}, b"", "")])
    return tuple(shared), tuple(own[0])


_SHARED, _OWN = _columns()
SQLITE_INSERT = (
    f"INSERT INTO {WebhookEvent.__tablename__} ({', '.join(_SHARED + _OWN)}) "
    f"VALUES ({', '.join('?' * len(_SHARED + _OWN))}) ON CONFLICT (provider, connection_id, event_id) DO NOTHING"
)


def _encoders(dialect: sa.Dialect, names: Sequence[str]) -> list[tuple[str, Callable[[object], object]]]:
    """For each of the columns ``names``: its name and its type's bind processor on ``dialect``."""
    columns = WebhookEvent.__table__.columns
    return [(name, _json_text if isinstance(columns[name].type, sa.JSON) else
             columns[name].type.dialect_impl(dialect).bind_processor(dialect) or _as_is) for name in names]


def _as_is(value: object) -> object:
    return value


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()
