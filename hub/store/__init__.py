"""The hub's own database: SQLAlchemy 2 (async) on SQLite by default, PostgreSQL in production."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from hub.datadir import private_file
from hub.store import sqlite_adapter
from hub.store.base import Base
from hub.store.writer import InlineWriter

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

__all__ = ["Base", "Database"]
T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI hook signature
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Database:
    """An engine plus a session factory; ``migrate()`` brings the schema to the newest version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict = {}
        if self.is_sqlite:
            path = url.split("///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                private_file(Path(path))  # SQLite gives its -wal and -shm files this file's mode
            if url.startswith("sqlite+aiosqlite"):
                kwargs["module"] = sqlite_adapter.dbapi()  # one thread hand-off per statement
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        on_file = self.is_sqlite and self.engine.url.database not in (None, "", ":memory:")
        self.inline = InlineWriter(self, _sqlite_pragmas) if on_file else None  # an in-memory database: the engine's

    async def write(self, fn: Callable[..., T], *args: Any, rows: int = 1) -> T:
        """``fn(conn, *args)`` (SQLAlchemy Core on a sync ``Connection``) as one committed transaction; its result.

        For short writes on a hot path: on a SQLite file it runs on the event loop, holding SQLite's write lock
        only for the work itself (``hub.store.writer``); elsewhere through the async engine. ``rows``: how many
        rows it writes (the SQLite WAL is checkpointed every ``CHECKPOINT_ROWS``)."""
        if self.inline is not None:
            return await self.inline.run(fn, *args, rows=rows)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def migrate(self) -> None:
        """Run every Alembic migration not yet applied (``upgrade heads``)."""

        def upgrade(sync_conn) -> None:  # noqa: ANN001
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "heads")

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
