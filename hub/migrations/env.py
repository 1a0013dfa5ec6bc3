"""Alembic environment, for ``Database.migrate`` and for the ``alembic`` CLI alike.

``Database.migrate`` hands over its connection (``config.attributes["connection"]``); the CLI (``alembic
history``, ``upgrade``, ``downgrade``, ``revision --autogenerate``, ``check``, from the project root, where
``alembic.ini`` is) connects to the hub's configured database (``HUB_DATABASE_URL``, else SQLite under
``HUB_DATA_DIR``), or to ``-x url=…``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import hub.store.models  # noqa: F401  (registers every table on Base.metadata)
from hub.store.base import Base


def run_on(connection: Connection) -> None:
    """Configure Alembic for ``connection`` and run the migrations asked for."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_cli(url: str) -> None:
    """Connect to ``url`` (an async SQLAlchemy URL) and migrate on that connection."""
    from hub.store import Database

    db = Database(url)  # the hub's engine: its SQLite pragmas, the data dir created
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await db.dispose()


def cli_url() -> str:
    """``-x url=…``, else the hub's configured database."""
    from hub.settings import Settings

    return context.get_x_argument(as_dictionary=True).get("url") or Settings().resolved_database_url


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
handed_over = context.config.attributes.get("connection")
if handed_over is not None:
    run_on(handed_over)
else:
    asyncio.run(run_from_cli(cli_url()))
