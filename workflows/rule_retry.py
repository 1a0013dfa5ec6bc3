"""RuleActionRetryWorkflow: run one failed action of a recorded rule run again (``POST …/actions/{n}:retry``).

For actions that run outside an opportunity's workflow (provider actions, ``http.post``): the action runs through
``workflows.rule_runner`` under its original idempotency key — a provider that saw the first attempt gets the
same key — and the outcome replaces the recorded one (``rules.record_retry``: attempts + 1, the run's status).
Actions an OpportunityWorkflow runs itself are retried by that workflow (its ``retry_action`` Update).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.rule_runs import RuleActivities
    from activities.rule_types import ActionOutcome, RecordRetryInput, RetryActionInput
    from workflows.rule_runner import STORE_RETRY, RuleRunner

RULE_RETRY = "RuleActionRetryWorkflow"


async def retry_and_record(runner: RuleRunner, input: RetryActionInput, event: dict) -> ActionOutcome:
    """Run the action again under its key and store the outcome on its run."""
    outcome = await runner.run_action(input.action, input.idempotency_key, event)
    await workflow.execute_activity_method(
        RuleActivities.record_retry,
        RecordRetryInput(org_id=input.org_id, run_id=input.run_id, index=input.index, outcome=outcome),
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=STORE_RETRY,
    )
    return outcome


@workflow.defn(name=RULE_RETRY)
class RuleActionRetryWorkflow:
    """Retries one action of an org-level rule run."""

    @workflow.run
    async def run(self, input: RetryActionInput) -> ActionOutcome:
        runner = RuleRunner(input.org_id, subject=workflow.info().workflow_id)
        return await retry_and_record(runner, input, {"org": input.org_id})
