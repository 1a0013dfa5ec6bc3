"""Temporal Schedules of ``on: schedule`` rules: one per rule, ``rule/{org}/{name}``, following its versions.

A rule's schedule is created when a version on ``schedule`` is applied, updated (cron or interval, the
version it runs) when a new version is, and removed when the rule is deleted, disabled or moved to another
trigger. Each firing starts ``ScheduledRuleWorkflow`` (overlap SKIP), visible on the Temporal UI's Schedules
page. The rules API syncs the schedule of each rule it changes; ``reconcile`` brings every schedule of an
org (or of all orgs) in line with the stored rules — after ``rules apply`` from the CLI and at start-up.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError

from activities.connector_types import org_priority
from activities.rule_types import SCHEDULED_RULE_WORKFLOW, ScheduledRuleInput
from hub.runtime import Hub, TemporalUnavailable
from hub.store.resources import ResourceVersion, current_versions
from hub.temporal import delete_schedule, upsert_schedule
from rules.validate import interval_seconds

log = logging.getLogger("activities.rule_schedules")
PREFIX = "rule/"


def schedule_id(org_id: str, name: str) -> str:
    """The Schedule (and workflow id stem) of a scheduled rule."""
    return f"{PREFIX}{org_id}/{name}"


def wanted(row: ResourceVersion | None) -> bool:
    """Whether a rule version needs a schedule: current, enabled, on ``schedule``."""
    return row is not None and not row.deleted and row.enabled and row.spec.get("spec", {}).get("on") == "schedule"


def _schedule(row: ResourceVersion, task_queue: str) -> Schedule:
    expression = row.spec["spec"]["schedule"]
    seconds = interval_seconds(expression)
    spec = (ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=seconds))]) if seconds
            else ScheduleSpec(cron_expressions=[expression]))
    sid = schedule_id(row.org_id, row.name)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SCHEDULED_RULE_WORKFLOW,
            ScheduledRuleInput(org_id=row.org_id, rule=row.name, version=row.version, schedule=expression),
            id=sid, task_queue=task_queue, priority=org_priority(row.org_id),
        ),
        spec=spec,
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=f"rule {row.name} v{row.version} ({expression})"),
    )  # fmt: skip


async def sync_rule(client: Client, task_queue: str, org_id: str, name: str, row: ResourceVersion | None) -> str:
    """Create, update or remove one rule's schedule for its current version ``row``; says which it did."""
    if not wanted(row):
        return "removed" if await delete_schedule(client, schedule_id(org_id, name)) else "none"
    _, created = await upsert_schedule(client, schedule_id(org_id, name), _schedule(row, task_queue))
    return "created" if created else "updated"


async def rule_changed(hub: Hub, org_id: str, name: str, row: ResourceVersion | None) -> None:
    """From the rules API, best effort: sync the rule's schedule; with Temporal away, log it (``reconcile``
    catches up at the next start). A first version not on ``schedule`` never had a schedule: no call."""
    if not wanted(row) and row is not None and row.version == 1:
        return
    try:
        await sync_rule(await hub.temporal(), hub.settings.task_queue, org_id, name, row)
    except (TemporalUnavailable, RPCError) as exc:
        log.warning("schedule of rule %s/%s not synced: %s", org_id, name, exc)


async def reconcile(hub: Hub, org_id: str | None = None) -> dict[str, str]:
    """Every scheduled rule of the org (or of every org) has its schedule for its current version; schedules
    of rules that no longer want one are removed. Returns what was done, by schedule id."""
    client = await hub.temporal()
    async with hub.db.session() as session:
        orgs = [org_id] if org_id else list(await session.scalars(select(ResourceVersion.org_id).distinct()))
        rows = [r for org in orgs for r in await current_versions(session, org, "Rule") if wanted(r)]
    done = {schedule_id(r.org_id, r.name): await sync_rule(client, hub.settings.task_queue, r.org_id, r.name, r)
            for r in rows}
    prefix = schedule_id(org_id, "") if org_id else PREFIX
    async for listed in await client.list_schedules():
        if listed.id.startswith(prefix) and listed.id not in done:
            await client.get_schedule_handle(listed.id).delete()
            done[listed.id] = "removed"
    return done
