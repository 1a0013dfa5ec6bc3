"""Request budgets shared by every worker process: one row per budget, holding when its next request may leave.

A request takes the next free slot and moves it on by the budget's interval in one atomic ``UPDATE`` (the
row lock serialises concurrent takers on PostgreSQL, the write lock on SQLite), so the slots handed out across
all processes are spaced by the interval: a generic cell rate algorithm with no burst.
"""

from __future__ import annotations

from sqlalchemy import Float, String, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base


class RateBudget(Base):
    """One request budget (``{provider}:{connection}``, or ``{provider}:app``) and its next free slot."""

    __tablename__ = "rate_budgets"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float(precision=53))  # Unix seconds


async def ensure_budget(session: AsyncSession, key: str, now: float) -> None:
    """Create the budget's row if it does not exist yet: one write (no read first, which on SQLite could not
    upgrade its lock while other writers wait), idempotent, concurrent creators allowed."""
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    await session.execute(insert(RateBudget).values(key=key, next_at=now).on_conflict_do_nothing(index_elements=["key"]))


async def take_slot(session: AsyncSession, key: str, now: float, interval: float, horizon: float | None) -> float | None:
    """Take the budget's next free slot if it comes within ``horizon`` seconds of ``now`` (any slot when None):
    returns the slot (Unix seconds, not before ``now``), or None if the next free slot is further away."""
    start = case((RateBudget.next_at > now, RateBudget.next_at), else_=now)
    query = update(RateBudget).where(RateBudget.key == key)
    if horizon is not None:
        query = query.where(RateBudget.next_at <= now + horizon)
    taken = await session.scalar(query.values(next_at=start + interval).returning(RateBudget.next_at))
    return None if taken is None else taken - interval


async def next_slot(session: AsyncSession, key: str) -> float | None:
    """When the budget's next free slot comes (Unix seconds); None if the budget has no row."""
    return await session.scalar(select(RateBudget.next_at).where(RateBudget.key == key))
