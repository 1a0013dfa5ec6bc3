"""``fulqrun-hub backup`` / ``restore``: the hub's own data as portable JSON lines.

Secrets stay encrypted (the vault keys are backed up separately, never in this file). A restore
goes into a freshly migrated, empty database in one transaction: all or nothing.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, Integer, LargeBinary, func, select, text

import hub.store.models  # noqa: F401  (registers every table)
from hub.store import Base, Database
from hub.store.base import UtcDateTime

FORMAT = "fulqrun-hub-backup/1"


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _decoder(column):  # noqa: ANN001, ANN202
    if isinstance(column.type, UtcDateTime | DateTime):
        return lambda v: None if v is None else datetime.fromisoformat(v)
    if isinstance(column.type, LargeBinary):
        return lambda v: None if v is None else base64.b64decode(v)
    return lambda v: v


async def backup(db: Database, path: Path) -> dict[str, int]:
    """Write every table to ``path``; returns rows per table."""
    counts: dict[str, int] = {}
    tmp = path.with_suffix(path.suffix + ".partial")
    async with db.engine.connect() as conn:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets stay sealed, but it is all the data
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps({"format": FORMAT}) + "\n")
            for table in Base.metadata.sorted_tables:
                result = await conn.stream(select(table))
                n = 0
                async for row in result.mappings():
                    out.write(json.dumps({"table": table.name, "row": {k: _encode(v) for k, v in row.items()}}) + "\n")
                    n += 1
                counts[table.name] = n
    tmp.replace(path)
    return counts


class RestoreError(Exception):
    """The backup cannot be restored (wrong format, unknown table, target not empty)."""


async def restore(db: Database, path: Path) -> dict[str, int]:
    """Load a backup into an empty, migrated database in one transaction; returns rows per table."""
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    counts: dict[str, int] = dict.fromkeys(tables, 0)
    async with db.engine.begin() as conn:
        for table in tables.values():
            if await conn.scalar(select(func.count()).select_from(table)):
                raise RestoreError(f"target database is not empty (table {table.name!r} has rows)")
        with path.open() as src:
            header = json.loads(src.readline() or "{}")
            if header.get("format") != FORMAT:
                raise RestoreError(f"{path} is not a {FORMAT} file")
            for lineno, line in enumerate(src, start=2):
                record = json.loads(line)
                table = tables.get(record.get("table"))
                if table is None:
                    raise RestoreError(f"{path}:{lineno}: unknown table {record.get('table')!r}")
                row = {k: _decoder(table.c[k])(v) for k, v in record["row"].items() if k in table.c}
                await conn.execute(table.insert().values(**row))
                counts[table.name] += 1
        if conn.dialect.name == "postgresql":
            for table in tables.values():
                for col in table.primary_key.columns:
                    if isinstance(col.type, Integer) and col.autoincrement is not False and counts[table.name]:
                        await conn.execute(
                            text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                                f"(SELECT MAX({col.name}) FROM {table.name}))"
                            )
                        )
    return counts
