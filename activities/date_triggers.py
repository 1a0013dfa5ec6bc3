"""Relative-date rule triggers (``opportunity.close_date_approaching``, ``opportunity.stale``): what an opportunity
arms its durable timers for, and telling running opportunities when the org's date rules change.

Each OpportunityWorkflow arms Temporal timers itself (see ``activities.opportunity_types.date_points``); it learns
the days to arm for from ``opportunity.prepare`` (every transition, including the registration) and from the
signal :data:`SIGNAL`, which the rules API (and ``rules apply`` from the CLI) sends to each of the org's
opportunities that are not archived when a rule on one of these triggers is created, changed, disabled or deleted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from activities.opportunity_types import DATE_RULES_SIGNAL, DateRules
from activities.rule_runs import current_rules
from hub.runtime import Hub, TemporalUnavailable
from hub.store.opportunities import OpportunityRecord
from hub.store.resources import ResourceVersion, get_version
from rules.engine import RuleSet, compile_rules
from rules.model import DATE_TRIGGERS

log = logging.getLogger("activities.date_triggers")
CONCURRENCY = 16  # signals in flight at once


def date_rules(ruleset: RuleSet, day_seconds: int) -> DateRules:
    """The days of the enabled relative-date rules of a rule set, by trigger (sorted, distinct)."""
    days: dict[str, set[int]] = {}
    for rule in ruleset.rules:
        c = rule.compiled
        if c is not None and c.enabled and c.trigger in DATE_TRIGGERS and c.days is not None:
            days.setdefault(c.trigger, set()).add(c.days)
    return DateRules(days={t: sorted(d) for t, d in sorted(days.items())}, day_seconds=day_seconds,
                     read_at=datetime.now(UTC))


def _is_date_rule(row: ResourceVersion | None) -> bool:
    return row is not None and (row.spec or {}).get("spec", {}).get("on") in DATE_TRIGGERS


async def concerns_dates(session: AsyncSession, org_id: str, name: str, row: ResourceVersion | None) -> bool:
    """Whether a rule's new version ``row`` (or tombstone), or the version before it, is on a relative-date
    trigger: then the org's opportunities must hear of it."""
    if _is_date_rule(row):
        return True
    before = await get_version(session, org_id, "Rule", name, row.version - 1) if row and row.version > 1 else None
    return _is_date_rule(before)


async def rule_changed(hub: Hub, session: AsyncSession, org_id: str, name: str, row: ResourceVersion | None) -> int:
    """After a rule's new version ``row`` (or tombstone) in ``session`` (the rules API's transaction, which sees
    it): if it concerns dates, signal the org's date rules to its opportunities. Best effort (Temporal away:
    logged; the opportunities learn them at their next transition). Returns how many were signalled."""
    if not await concerns_dates(session, org_id, name, row):
        return 0
    try:
        return await broadcast(hub, session, org_id)
    except (TemporalUnavailable, RPCError) as exc:
        log.warning("date rules of org %s not sent to its opportunities: %s", org_id, exc)
        return 0


async def broadcast(hub: Hub, session: AsyncSession, org_id: str) -> int:
    """Signal the org's date rules that may run (current versions, both sides of a rollout; as ``session`` sees
    them) to every opportunity of the org that is
    not archived; returns how many were signalled."""
    ids = list(await session.scalars(select(OpportunityRecord.workflow_id).where(
        OpportunityRecord.org_id == org_id, OpportunityRecord.archived.is_(False))))  # fmt: skip
    if not ids:
        return 0
    runnable = (await current_rules(session, org_id)).runnable  # both sides of a rollout, as opportunity.prepare
    rules = date_rules(compile_rules(runnable), hub.settings.day_seconds)
    client = await hub.temporal()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(workflow_id: str) -> int:
        async with limit:
            try:
                await client.get_workflow_handle(workflow_id).signal(DATE_RULES_SIGNAL, rules)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                return 0
            return 1

    return sum(await asyncio.gather(*(one(i) for i in ids)))
