"""Staged rollouts of rule versions: a candidate version runs for a share of opportunities and named branches.

One row per rule under rollout. While it exists the rule runs ``candidate_version`` for the opportunities
``hub.flags.rule_version`` picks (a stable hash of the opportunity id below ``percent``, or a branch in
``branches``) and ``stable_version`` for the others, whatever version is newest. Promoting or rolling back
ends it (``routes.rule_versions``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow


class RuleRollout(Base):
    """A rule's staged rollout: which two versions, and who gets the candidate."""

    __tablename__ = "rule_rollouts"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    rule: Mapped[str] = mapped_column(String(63), primary_key=True)
    stable_version: Mapped[int] = mapped_column(Integer)
    candidate_version: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    branches: Mapped[list] = mapped_column(default=list)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def targeting(self) -> dict:
        """What ``hub.flags.rule_version`` decides by."""
        return {"stable": self.stable_version, "candidate": self.candidate_version, "percent": self.percent,
                "branches": list(self.branches)}  # fmt: skip


async def rollouts(session: AsyncSession, org_id: str) -> list[RuleRollout]:
    """The org's rollouts, by rule name."""
    return list(await session.scalars(select(RuleRollout).where(RuleRollout.org_id == org_id).order_by(RuleRollout.rule)))


async def get_rollout(session: AsyncSession, org_id: str, rule: str) -> RuleRollout | None:
    """One rule's rollout, or None."""
    return await session.get(RuleRollout, (org_id, rule))


async def end_rollout(session: AsyncSession, org_id: str, rule: str) -> None:
    """The rule runs its newest version for everyone again."""
    await session.execute(delete(RuleRollout).where(RuleRollout.org_id == org_id, RuleRollout.rule == rule))
