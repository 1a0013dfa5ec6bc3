"""WebhookEventWorkflow: one per inbox event that has work (``webhook/{provider}/{connection}/{event_id}``).

For each domain event of the inbox event (mapped by the relay with ``connectors.events``):
- an event about an opportunity is signalled (``domain_event``) to ``opportunity/{org}/{id}``, whose
  workflow records it and runs the rules listening to it with the opportunity's data;
- an event about no opportunity, or whose opportunity has no workflow (recorded as such), runs the
  org's rules listening to it here, through ``workflows.rule_runner``.
Then the inbox row is marked done. A failure is recorded on the row (retried as a new generation,
dead-lettered after the configured number of attempts) and the workflow ends.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.opportunity_types import DomainEvent, DomainSource
    from activities.webhook_types import (
        CompleteEventInput,
        EventOutcome,
        FailEventInput,
        MappedEvent,
        WebhookEventInput,
    )
    from workflows.rule_runner import RuleRunner, failure_message

COMPLETE = "webhooks.complete_event"
FAIL = "webhooks.fail_event"
SIGNAL = "domain_event"
STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))


def workflow_id(provider: str, connection_id: str, event_id: str, generation: int = 0) -> str:
    """The workflow id of an inbox event (a replay or retry after failure is a new generation)."""
    base = f"webhook/{provider}/{connection_id}/{event_id}"
    return base if generation == 0 else f"{base}#{generation}"


def opportunity_workflow_id(org_id: str, opportunity_id: str) -> str:
    """The OpportunityWorkflow's id."""
    return f"opportunity/{org_id}/{opportunity_id}"


def _not_found(exc: ApplicationError) -> bool:
    return exc.type == "ExternalWorkflowExecutionNotFound" or "ExternalWorkflowExecutionNotFound" in str(exc)


@workflow.defn(name="WebhookEventWorkflow")
class WebhookEventWorkflow:
    """Signals opportunities, runs org-level rules, marks the inbox row done."""

    @workflow.run
    async def run(self, input: WebhookEventInput) -> list[EventOutcome]:
        wid = workflow.info().workflow_id
        try:
            outcomes = [await self._signal(input, event) for event in input.events]
            unbound = [(i, e) for i, e in enumerate(input.events) if not outcomes[i].signalled]
            if unbound:
                await self._run_rules(input, unbound, outcomes, wid)
        except (ActivityError, ApplicationError) as exc:
            await workflow.execute_local_activity(
                FAIL,
                FailEventInput(inbox_id=input.inbox_id, generation=input.generation, error=failure_message(exc)),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            return []
        await workflow.execute_local_activity(
            COMPLETE,
            CompleteEventInput(inbox_id=input.inbox_id, generation=input.generation, workflow_id=wid, outcomes=outcomes),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        return outcomes

    async def _signal(self, input: WebhookEventInput, event: MappedEvent) -> EventOutcome:
        if not event.opportunity_id:
            return EventOutcome(type=event.type, note="no opportunity")
        payload = DomainEvent(
            type=event.type,
            data=event.data,
            source=DomainSource(provider=input.provider, event_id=input.event_id),
        )
        target = opportunity_workflow_id(input.org_id, event.opportunity_id)
        try:
            await workflow.get_external_workflow_handle(target).signal(SIGNAL, payload)
        except ApplicationError as exc:
            if not _not_found(exc):
                raise
            return EventOutcome(
                type=event.type, opportunity_id=event.opportunity_id, note="opportunity workflow not found"
            )
        return EventOutcome(type=event.type, opportunity_id=event.opportunity_id, signalled=True, note="signalled")

    async def _run_rules(
        self, input: WebhookEventInput, unbound: list[tuple[int, MappedEvent]], outcomes: list[EventOutcome], wid: str
    ) -> None:
        events = [
            {"type": e.type, "stage": None, "opp": {}, "event": e.data, "org": input.org_id, "branch": None,
             "role": None}
            for _, e in unbound
        ]  # fmt: skip
        runs = await RuleRunner(input.org_id, subject=wid).run(events, key_prefix=wid)
        for index, event in unbound:
            outcomes[index].rules_fired = [r.rule for r in runs if r.fired and r.trigger == event.type]
