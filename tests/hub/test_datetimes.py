"""One datetime column type for every table: stored in UTC, read back timezone-aware, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa

import hub.store.models  # noqa: F401  (every table on Base.metadata)
from hub.store import Database
from hub.store.base import Base, UtcDateTime
from hub.store.orgs import Org


def test_every_datetime_column_is_the_utc_type() -> None:
    datetimes = [(t.name, c.name, c.type) for t in Base.metadata.tables.values() for c in t.columns
                 if isinstance(c.type, sa.DateTime | UtcDateTime)]
    assert len(datetimes) > 20
    assert [(t, c) for t, c, kind in datetimes if not isinstance(kind, UtcDateTime)] == []


async def test_datetimes_come_back_aware_in_utc_whatever_was_written(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    written = {
        "aware-utc": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        "aware-plus-two": datetime(2026, 3, 1, 14, 0, tzinfo=plus_two),  # the same instant
        "naive": datetime(2026, 3, 1, 12, 0),  # taken as UTC
    }
    async with db.session() as session:
        session.add_all(Org(id=name, name=name, created_at=at) for name, at in written.items())
    async with db.session() as session:
        read = {o.id: o.created_at for o in await session.scalars(sa.select(Org))}
        cutoff = datetime(2026, 3, 1, 13, 0, tzinfo=plus_two)  # 11:00 UTC: compared in UTC too
        later = set(await session.scalars(sa.select(Org.id).where(Org.created_at > cutoff)))
    for name, at in read.items():
        assert at.tzinfo is not None and at.utcoffset() == timedelta(0), name
        assert at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC), name
    assert later == set(written)
