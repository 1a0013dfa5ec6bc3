"""Activities of ``workflows.rule_runner``: plan rules against events, record rule runs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.rule_types import (
    PlannedActionModel,
    RecheckInput,
    RecordRetryInput,
    RecordRunsInput,
    RuleOutcomeModel,
    RulePlan,
    RulePlanInput,
    RuleRun,
)
from hub.flags import rule_version
from hub.runtime import Hub
from hub.store.opportunities import get_projection, record_action_retry, record_rule_runs, save_rule_run
from hub.store.resources import ResourceVersion, current_versions, get_version
from hub.store.rollouts import rollouts
from rules.engine import RuleSet, compile_rules
from rules.steps import StepProblem, rule_variables, unless_holds

PLAN = "rules.plan"
RECORD_RUNS = "rules.record_runs"
RECORD_RETRY = "rules.record_retry"
OPPORTUNITY_PREFIX = "opportunity/"


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


@dataclass(frozen=True)
class OrgRules:
    """The org's rules as they run: the current versions, and for each rule under staged rollout its rollout
    (``hub.store.rollouts``) with its stable and candidate versions, one of which runs for each event."""

    org_id: str
    current: tuple[ResourceVersion, ...]
    staged: tuple[tuple[str, dict, ResourceVersion | None, ResourceVersion | None], ...] = ()

    def for_event(self, event: dict) -> RuleSet:
        """The compiled rules for one event: a staged rule's version is chosen by ``hub.flags.rule_version`` on the
        event's opportunity id (the org id for events without one) and branch. Compiled sets are cached."""
        chosen = list(self.current)
        subject = str((event.get("opp") or {}).get("id") or self.org_id)
        for rule, targeting, stable, candidate in self.staged:
            version = rule_version(self.org_id, rule, targeting, subject, event.get("branch"))
            row = candidate if version == targeting["candidate"] else stable
            if row is not None and row.enabled and not row.deleted:
                chosen.append(row)
        return compile_rules(chosen)

    @property
    def runnable(self) -> list[ResourceVersion]:
        """Every version that may run for some event: the current ones, and both sides of each rollout."""
        rows = [*self.current, *(r for *_, stable, candidate in self.staged for r in (stable, candidate) if r)]
        return [r for r in rows if r.enabled and not r.deleted]

    @property
    def triggers(self) -> frozenset[str]:
        """Every trigger some version that may run listens to."""
        return frozenset(str((r.spec.get("spec") or {}).get("on")) for r in self.runnable)


def plan_events(rules: OrgRules, events: list[dict]) -> RulePlan:
    """The outcomes of the rules listening to each event, in event order (each outcome names the version that
    decided it: under a staged rollout, the one chosen for the event's opportunity)."""
    outcomes = []
    for index, event in enumerate(events):
        ruleset = rules.for_event(event)
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
                    actions=[PlannedActionModel(name=a.name, params=a.params, step=a.step) for a in outcome.actions],
                )
            )
    return RulePlan(outcomes=outcomes, on_failure="automation.failed" in rules.triggers)


async def current_rules(session: AsyncSession, org_id: str) -> OrgRules:
    """The org's current (latest, enabled) rule versions, those under staged rollout with their two versions."""
    staged = await rollouts(session, org_id)
    names = {r.rule for r in staged}
    current = tuple(r for r in await current_versions(session, org_id, "Rule") if r.name not in names)
    versions = [
        (r.rule, r.targeting(), await get_version(session, org_id, "Rule", r.rule, r.stable_version),
         await get_version(session, org_id, "Rule", r.rule, r.candidate_version))
        for r in staged
    ]  # fmt: skip
    return OrgRules(org_id, current, tuple(versions))


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
        rows = [_row(input.org_id, input.subject, run) for run in input.runs]
        async with self.hub.db.session() as session:
            return await record_rule_runs(session, rows)

    @activity.defn(name="rules.save_run")
    async def save_run(self, input: RecordRunsInput) -> None:
        """Store the runs' latest state (a run going on after a wait: its actions so far, its status)."""
        async with self.hub.db.session() as session:
            for run in input.runs:
                await save_rule_run(session, _row(input.org_id, input.subject, run))

    @activity.defn(name="rules.recheck")
    async def recheck(self, input: RecheckInput) -> bool:
        """Whether a wait's ``unless`` holds now: ``opp`` and ``documents`` are the opportunity's current ones
        (the projection of its workflow) when the run's subject is an opportunity."""
        event = dict(input.event)
        documents: dict = {}
        if input.subject.startswith(OPPORTUNITY_PREFIX):
            opportunity_id = input.subject.removeprefix(OPPORTUNITY_PREFIX).partition("/")[2]
            async with self.hub.db.session() as session:
                record = await get_projection(session, input.org_id, opportunity_id)
            if record is not None:
                event["opp"] = {**(record.state.get("opp") or {}), "id": opportunity_id, "stage": record.stage}
                documents = record.state.get("documents") or {}
        variables = {**rule_variables(event), "steps": input.outputs, "documents": documents}
        try:
            return unless_holds(input.unless, variables)
        except StepProblem as exc:
            raise ApplicationError(str(exc), type="UnlessFailed", non_retryable=True) from None

    @activity.defn(name=RECORD_RETRY)
    async def record_retry(self, input: RecordRetryInput) -> bool:
        """Store a retried action's outcome on its run (attempts + 1, the run's status recomputed)."""
        async with self.hub.db.session() as session:
            return await record_action_retry(
                session, input.org_id, input.run_id, input.index, input.outcome.model_dump(mode="json")
            )


def _row(org_id: str, subject: str, run: RuleRun) -> dict:
    return {
        "org_id": org_id,
        "key": run.key,
        "subject": subject,
        "trigger": run.trigger,
        "rule": run.rule,
        "version": run.version,
        "fired": run.fired,
        "reason": run.reason[:2000],
        "actions": [a.model_dump(mode="json") for a in run.actions],
        "at": run.at,
    }
