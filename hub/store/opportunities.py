"""The opportunity projection the OpportunityWorkflow keeps current, its stage visits and rule runs.

The workflow is the source of truth; these rows are written by activities (``opportunity.project``,
``rules.record_runs``) so that reads survive a stopped worker and pipelines can be aggregated in SQL.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Connection,
    Index,
    Insert,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow


class OpportunityRecord(Base):
    """The last projected state of one opportunity's workflow."""

    __tablename__ = "opportunities"
    __table_args__ = (Index("ix_opportunities_org_stage", "org_id", "stage"),)
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    pipeline_name: Mapped[str] = mapped_column(String(200), index=True)
    pipeline_version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(100))
    body_hash: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    branch: Mapped[str | None] = mapped_column(String(64), default=None)
    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)


class StageVisitRecord(Base):
    """One stay of an opportunity in a stage (``exited_at`` is None while it is still there)."""

    __tablename__ = "opportunity_stage_visits"
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    opportunity_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_name: Mapped[str] = mapped_column(String(200), index=True)
    stage: Mapped[str] = mapped_column(String(100))
    entered_at: Mapped[datetime] = mapped_column()
    exited_at: Mapped[datetime | None] = mapped_column(default=None)


class RuleRunRecord(Base):
    """The outcome of one rule for one event: fired or not and why, and each action's result."""

    __tablename__ = "rule_runs"
    __table_args__ = (UniqueConstraint("key"), Index("ix_rule_runs_org_status", "org_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(400))
    subject: Mapped[str] = mapped_column(String(300), index=True)
    trigger: Mapped[str] = mapped_column(String(100))
    rule: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    fired: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(2000))
    actions: Mapped[list] = mapped_column(default=list)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | failed | skipped | waiting | cancelled


def action_status(action: dict) -> str:
    """``ok``, ``failed``, (a step not run) ``skipped``, or (a wait step) ``waiting`` or ``cancelled``."""
    return action.get("status") or ("ok" if action.get("ok") else "failed")


def run_status(fired: bool, actions: list[dict]) -> str:
    """``skipped`` (the rule did not fire), ``cancelled`` or ``waiting`` (a wait step is), ``failed`` (an action
    failed) or ``ok``."""
    if not fired:
        return "skipped"
    statuses = {action_status(a) for a in actions}
    return next((s for s in ("cancelled", "waiting", "failed") if s in statuses), "ok")


@dataclass(frozen=True)
class RunFilter:
    """What ``GET /v1/rule-runs`` filters on (None: any)."""

    rule: str | None = None
    status: str | None = None
    trigger: str | None = None
    subject: str | None = None
    since: datetime | None = None


def _insert(session: AsyncSession):  # noqa: ANN202 - dialect-specific insert construct
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


_VISIT_COLUMNS = ("idx", "pipeline_name", "stage", "entered_at", "exited_at")
_MINE = (StageVisitRecord.org_id == bindparam("b_org")) & (StageVisitRecord.opportunity_id == bindparam("b_id"))
_DELETE_VISITS = delete(StageVisitRecord).where(_MINE)
_INSERT_VISITS = insert(StageVisitRecord)


@functools.cache
def _upsert(dialect: str, columns: tuple[str, ...]) -> Insert:
    """The revision-guarded upsert of a projection row with ``columns`` (built once per dialect and columns)."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(OpportunityRecord)
    return stmt.on_conflict_do_update(
        index_elements=["org_id", "id"],
        set_={k: stmt.excluded[k] for k in columns if k not in ("org_id", "id", "created_at")},
        where=OpportunityRecord.revision < stmt.excluded.revision,
    ).returning(OpportunityRecord.revision)


def write_projection(conn: Connection, row: dict, visits: list[dict]) -> bool:
    """Write an opportunity's projection unless a newer revision is already stored; True if written.

    Core on a sync connection, for ``Database.write``: the projection is written on every transition, so its
    statements are built once and take the values as parameters."""
    if conn.execute(_upsert(conn.dialect.name, tuple(sorted(row))), row).first() is None:
        return False
    conn.execute(_DELETE_VISITS, {"b_org": row["org_id"], "b_id": row["id"]})
    if visits:
        conn.execute(_INSERT_VISITS, [{"org_id": row["org_id"], "opportunity_id": row["id"],
                                       **{c: v.get(c) for c in _VISIT_COLUMNS}} for v in visits])  # fmt: skip
    return True


async def get_projection(session: AsyncSession, org_id: str, opportunity_id: str) -> OpportunityRecord | None:
    """The projected opportunity, or None."""
    return await session.get(OpportunityRecord, (org_id, opportunity_id))


@dataclass(frozen=True)
class OpportunityFilter:
    """What ``GET /v1/opportunities`` filters on (None: any)."""

    stage: str | None = None
    pipeline: str | None = None
    branch: str | None = None
    owner: str | None = None
    archived: bool = False


async def list_opportunities(
    session: AsyncSession, org_id: str, where: OpportunityFilter, limit: int, after_id: str | None = None
) -> list[OpportunityRecord]:
    """The org's projected opportunities by id, matching ``where``; ``after_id`` continues a page."""
    query = select(OpportunityRecord).where(OpportunityRecord.org_id == org_id,
                                            OpportunityRecord.archived.is_(where.archived))
    for column, value in ((OpportunityRecord.stage, where.stage), (OpportunityRecord.pipeline_name, where.pipeline),
                          (OpportunityRecord.branch, where.branch), (OpportunityRecord.owner, where.owner)):
        if value is not None:
            query = query.where(column == value)
    if after_id is not None:
        query = query.where(OpportunityRecord.id > after_id)
    return list((await session.scalars(query.order_by(OpportunityRecord.id).limit(limit))).all())


async def states_between(
    session: AsyncSession, org_id: str, since: datetime, until: datetime, limit: int | None = None
) -> list[dict]:
    """The projected states (at most ``limit``) of the org's opportunities that may hold history in
    ``[since, until)``: created before ``until`` and changed since ``since`` (a state's ``history`` and ``events`` say
    when each thing happened)."""
    query = select(OpportunityRecord.state).where(
        OpportunityRecord.org_id == org_id, OpportunityRecord.created_at < until, OpportunityRecord.updated_at >= since
    )
    return list((await session.scalars(query.order_by(OpportunityRecord.id).limit(limit))).all())


async def list_for_pipeline(
    session: AsyncSession, org_id: str, pipeline_name: str, below_version: int | None = None
) -> list[OpportunityRecord]:
    """Projected opportunities on one pipeline (optionally only those pinned below a version)."""
    query = select(OpportunityRecord).where(
        OpportunityRecord.org_id == org_id, OpportunityRecord.pipeline_name == pipeline_name
    )
    if below_version is not None:
        query = query.where(OpportunityRecord.pipeline_version < below_version)
    return list((await session.scalars(query.order_by(OpportunityRecord.id))).all())


async def record_rule_runs(session: AsyncSession, runs: list[dict]) -> int:
    """Insert rule runs, skipping keys already recorded (activity retries); returns rows inserted."""
    if not runs:
        return 0
    runs = [{**run, "status": run_status(run["fired"], run["actions"])} for run in runs]
    stmt = _insert(session)(RuleRunRecord).values(runs).on_conflict_do_nothing(index_elements=["key"])
    return len((await session.execute(stmt.returning(RuleRunRecord.id))).all())


async def save_rule_run(session: AsyncSession, run: dict) -> None:
    """Insert a rule run or update its actions, reason and status (a run going on after a wait)."""
    run = {**run, "status": run_status(run["fired"], run["actions"])}
    stmt = _insert(session)(RuleRunRecord).values(run)
    changes = {k: stmt.excluded[k] for k in ("actions", "reason", "status")}
    await session.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=changes))


async def rule_runs_for(session: AsyncSession, org_id: str, subject: str, limit: int = 100) -> list[RuleRunRecord]:
    """The most recent rule runs of one subject (a workflow id), newest first."""
    query = (
        select(RuleRunRecord)
        .where(RuleRunRecord.org_id == org_id, RuleRunRecord.subject == subject)
        .order_by(RuleRunRecord.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def list_rule_runs(
    session: AsyncSession, org_id: str, where: RunFilter, limit: int, before_id: int | None = None
) -> list[RuleRunRecord]:
    """An org's rule runs, newest first, matching ``where``; ``before_id`` continues a page."""
    query = select(RuleRunRecord).where(RuleRunRecord.org_id == org_id)
    for column, value in ((RuleRunRecord.rule, where.rule), (RuleRunRecord.status, where.status),
                          (RuleRunRecord.trigger, where.trigger), (RuleRunRecord.subject, where.subject)):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(RuleRunRecord.at >= where.since)
    if before_id is not None:
        query = query.where(RuleRunRecord.id < before_id)
    return list((await session.scalars(query.order_by(RuleRunRecord.id.desc()).limit(limit))).all())


async def get_rule_run(session: AsyncSession, org_id: str, run_id: int) -> RuleRunRecord | None:
    """One of the org's rule runs, or None."""
    run = await session.get(RuleRunRecord, run_id)
    return run if run is not None and run.org_id == org_id else None


async def record_action_retry(session: AsyncSession, org_id: str, run_id: int, index: int, outcome: dict) -> bool:
    """Store the outcome of a retried action (its attempts counted on) and the run's new status."""
    run = await get_rule_run(session, org_id, run_id)
    if run is None or not 0 <= index < len(run.actions):
        return False
    actions = list(run.actions)
    actions[index] = {**outcome, "attempts": int(actions[index].get("attempts", 1)) + 1}
    run.actions, run.status = actions, run_status(run.fired, actions)
    return True


async def pipeline_metrics(session: AsyncSession, org_id: str, pipeline_name: str, stages: list[str]) -> dict:
    """Per stage: opportunities now in it, conversion to the next stage, median days spent in it.

    Conversion from stage *i* is the share of opportunities that ever entered stage *i* and later
    entered stage *i+1* (in pipeline order); the median counts finished stays only.
    """
    counts = dict(
        (
            await session.execute(
                select(OpportunityRecord.stage, func.count())
                .where(OpportunityRecord.org_id == org_id, OpportunityRecord.pipeline_name == pipeline_name)
                .group_by(OpportunityRecord.stage)
            )
        ).all()
    )
    visits = (
        await session.execute(
            select(
                StageVisitRecord.opportunity_id,
                StageVisitRecord.stage,
                StageVisitRecord.entered_at,
                StageVisitRecord.exited_at,
            ).where(StageVisitRecord.org_id == org_id, StageVisitRecord.pipeline_name == pipeline_name)
        )
    ).all()
    entered: dict[str, set[str]] = {s: set() for s in stages}
    durations: dict[str, list[float]] = {s: [] for s in stages}
    for opp_id, stage, entered_at, exited_at in visits:
        entered.setdefault(stage, set()).add(opp_id)
        if exited_at is not None:
            durations.setdefault(stage, []).append((exited_at - entered_at).total_seconds())
    out = []
    for i, stage in enumerate(stages):
        nxt = stages[i + 1] if i + 1 < len(stages) else None
        base = entered[stage]
        converted = len(base & entered[nxt]) if nxt else None
        out.append(
            {
                "stage": stage,
                "opportunities": counts.get(stage, 0),
                "entered": len(base),
                "next_stage": nxt,
                "converted": converted,
                "conversion": (converted / len(base)) if nxt and base else None,
                "median_seconds_in_stage": statistics.median(durations[stage]) if durations[stage] else None,
            }
        )
    return {"pipeline": pipeline_name, "total": sum(counts.values()), "stages": out}
