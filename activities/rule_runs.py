"""Activities of ``workflows.rule_runner``: plan rules against events, record rule runs."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.rule_types import (
    PlannedActionModel,
    RecordRetryInput,
    RecordRunsInput,
    RuleOutcomeModel,
    RulePlan,
    RulePlanInput,
)
from hub.runtime import Hub
from hub.store.opportunities import record_action_retry, record_rule_runs
from hub.store.resources import current_versions
from rules.engine import RuleSet, compile_rules

PLAN = "rules.plan"
RECORD_RUNS = "rules.record_runs"
RECORD_RETRY = "rules.record_retry"


def relevant(ruleset: RuleSet, event: dict) -> set[str]:
    """Rules that listen to this event (its trigger, its stage for stage rules, its days for relative-date rules):
    their outcomes are runs.
    An event naming a ``rule`` (a scheduled rule's firing) is for that rule only.

    Outcomes of every other rule ("trigger mismatch") say nothing about this event and are not kept.
    """
    kind, stage, only, days = event.get("type"), event.get("stage"), event.get("rule"), event.get("days")
    return {
        r.name
        for r in ruleset.rules
        if r.compiled is not None
        and only in (None, r.name)
        and r.compiled.enabled
        and r.compiled.trigger == kind
        and (r.compiled.stage is None or r.compiled.stage == stage)
        and (r.compiled.days is None or days in (None, r.compiled.days))
    }


def plan_events(ruleset: RuleSet, events: list[dict]) -> RulePlan:
    """The outcomes of the rules listening to each event, in event order."""
    outcomes = []
    for index, event in enumerate(events):
        listening = relevant(ruleset, event)
        for outcome in ruleset.evaluate(event):
            if outcome.rule not in listening:
                continue
            outcomes.append(
                RuleOutcomeModel(
                    event=index,
                    trigger=str(event.get("type")),
                    rule=outcome.rule,
                    version=outcome.version,
                    fired=outcome.fired,
                    reason=outcome.reason,
                    actions=[PlannedActionModel(name=a.name, params=a.params) for a in outcome.actions],
                )
            )
    return RulePlan(outcomes=outcomes, on_failure="automation.failed" in ruleset.triggers)


async def current_rules(session: AsyncSession, org_id: str) -> RuleSet:
    """The org's current (latest, enabled) rule versions, compiled (cached by content hash)."""
    return compile_rules(await current_versions(session, org_id, "Rule"))


class RuleActivities:
    """Loads the org's current rules and evaluates them; stores rule runs. The runtime is injected."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @activity.defn(name=PLAN)
    async def plan(self, input: RulePlanInput) -> RulePlan:
        """Evaluate the org's current rule versions against each event."""
        async with self.hub.db.session() as session:
            ruleset = await current_rules(session, input.org_id)
        return plan_events(ruleset, input.events)

    @activity.defn(name=RECORD_RUNS)
    async def record_runs(self, input: RecordRunsInput) -> int:
        """Store rule runs (a retried activity inserts nothing twice: runs are unique by key)."""
        rows = [
            {
                "org_id": input.org_id,
                "key": run.key,
                "subject": input.subject,
                "trigger": run.trigger,
                "rule": run.rule,
                "version": run.version,
                "fired": run.fired,
                "reason": run.reason[:2000],
                "actions": [a.model_dump(mode="json") for a in run.actions],
                "at": run.at,
            }
            for run in input.runs
        ]
        async with self.hub.db.session() as session:
            return await record_rule_runs(session, rows)

    @activity.defn(name=RECORD_RETRY)
    async def record_retry(self, input: RecordRetryInput) -> bool:
        """Store a retried action's outcome on its run (attempts + 1, the run's status recomputed)."""
        async with self.hub.db.session() as session:
            return await record_action_retry(
                session, input.org_id, input.run_id, input.index, input.outcome.model_dump(mode="json")
            )
