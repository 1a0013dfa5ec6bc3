"""ScheduledRuleWorkflow: one run of an ``on: schedule`` rule, started by its Temporal Schedule.

Each rule on ``schedule`` has one Schedule, ``rule/{org}/{name}`` (``activities.rule_schedules``: created, updated and
removed with the rule's versions), whose action starts this workflow with the rule's name and version. The run
plans only that rule (the org's current version of it, through ``rules.plan``) for a ``schedule`` event and runs
its actions through ``workflows.rule_runner``; the actions' keys derive from the run's workflow id, which the
Schedule makes unique per firing (``rule/{org}/{name}-<time>``).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.rule_types import SCHEDULED_RULE_WORKFLOW, RuleRun, ScheduledRuleInput
    from workflows.rule_runner import RuleRunner

@workflow.defn(name=SCHEDULED_RULE_WORKFLOW)
class ScheduledRuleWorkflow:
    """Runs one scheduled rule once."""

    @workflow.run
    async def run(self, input: ScheduledRuleInput) -> list[RuleRun]:
        wid = workflow.info().workflow_id
        event = {
            "type": "schedule",
            "rule": input.rule,
            "schedule": input.schedule,
            "stage": None,
            "opp": {},
            "org": input.org_id,
            "event": {"rule": input.rule, "version": input.version, "at": workflow.now().isoformat()},
        }
        return await RuleRunner(input.org_id, subject=wid).run([event], key_prefix=wid)
