"""WebhookEventWorkflow: one per inbox event that has work (``webhook/{provider}/{connection}/{event_id}``).

For each domain event of the inbox event (mapped by the relay with ``connectors.events``), first its
follow-up, if the relay named one (Graph events; each provider call on the sharepoint provider queue):
- ``renew_subscription`` (lifecycle ``reauthorizationRequired``): ``sharepoint.renew_subscription``, which
  subscribes anew if Graph no longer has the subscription; ``create_subscription`` (``subscriptionRemoved``):
  ``sharepoint.create_subscription`` (finds and renews a live one first, so a retry makes no second one);
- ``sync_documents`` (lifecycle ``missed``, or a change under a drive's root, which names no item): the
  connection's ``sharepoint.documents`` sync runs now; its delta raises one event per changed file;
- ``locate_document`` (a change naming a drive item): ``sharepoint.get_item`` gives the item's path; a file
  under ``Opportunities/{id}/`` of an opportunity the hub knows becomes that opportunity's event, naming the
  required document it is (``data.document``, which marks it) unless this connection's app wrote it.
Then:
- an event about an opportunity is signalled (``domain_event``) to ``opportunity/{org}/{id}``, whose
  workflow records it and runs the rules listening to it with the opportunity's data;
- an event about no opportunity, or whose opportunity has no workflow (recorded as such), runs the
  org's rules listening to it here, through ``workflows.rule_runner``; here ``ai.score_lead`` and
  ``ai.next_action`` act on the event's lead (``ai.score_lead`` activity).
Then the inbox row is marked done. A failure is recorded on the row (retried as a new generation,
dead-lettered after the configured number of attempts) and the workflow ends.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ai import AiActivities
    from activities.ai_types import LeadScoreResult, ScoreLeadInput, lead_next_action
    from activities.connector_types import ActionCall
    from activities.opportunity_types import DomainEvent, DomainSource
    from activities.rule_types import PlannedActionModel, approval_target
    from activities.webhook_types import (
        CompleteEventInput,
        DocumentMatch,
        DocumentMatchInput,
        EventOutcome,
        FailEventInput,
        MappedEvent,
        SyncNowInput,
        WebhookEventInput,
    )
    from activities.webhooks import WebhookActivities
    from rules.actions import placement
    from workflows.actions import execute_action
    from workflows.opportunity import OPPORTUNITIES_ROOT
    from workflows.rule_runner import RuleRunner, RuleRunWorkflow, failure_message

SIGNAL = "domain_event"
STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
FOLLOW_UPS = "graph-follow-ups"  # workflow.patched: histories before follow-ups existed run none
RULE_RUN_APPROVALS = "rule-run-approvals"  # workflow.patched: histories before approval steps forward nothing
DOCUMENTS_SYNC = "sharepoint.documents"
AI_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30), non_retryable_error_types=["LookupError"])


def workflow_id(provider: str, connection_id: str, event_id: str, generation: int = 0) -> str:
    """The workflow id of an inbox event (a replay or retry after failure is a new generation)."""
    base = f"webhook/{provider}/{connection_id}/{event_id}"
    return base if generation == 0 else f"{base}#{generation}"


def opportunity_workflow_id(org_id: str, opportunity_id: str) -> str:
    """The OpportunityWorkflow's id."""
    return f"opportunity/{org_id}/{opportunity_id}"


def opportunity_of(path: str | None) -> tuple[str, str] | None:
    """``(opportunity id, path below its folder)`` of an item under ``Opportunities/{id}/``, else None."""
    top, _, rest = (path or "").partition("/")
    opportunity_id, _, below = rest.partition("/")
    if top.lower() != OPPORTUNITIES_ROOT.lower() or not opportunity_id or not below:
        return None
    return opportunity_id, below


def _not_found(exc: ApplicationError) -> bool:
    return exc.type == "ExternalWorkflowExecutionNotFound" or "ExternalWorkflowExecutionNotFound" in str(exc)


@workflow.defn(name="WebhookEventWorkflow")
class WebhookEventWorkflow:
    """Signals opportunities, runs org-level rules, marks the inbox row done."""

    @workflow.run
    async def run(self, input: WebhookEventInput) -> list[EventOutcome]:
        wid = workflow.info().workflow_id
        try:
            events: list[MappedEvent] = list(input.events)
            done: list[dict | None] = [None] * len(events)
            if any(e.follow_up for e in events) and workflow.patched(FOLLOW_UPS):
                for i, event in enumerate(input.events):
                    events[i], done[i] = await self._follow_up(input, event, f"{wid}/{i}")
            outcomes = [await self._signal(input, event) for event in events]
            answers = [target for e in events if e.type == "slack.action" and (target := approval_target(e.data))]
            if answers and workflow.patched(RULE_RUN_APPROVALS):
                for target, answer in answers:
                    await self._answer(target, {**answer, "org": input.org_id})
            for outcome, follow_up in zip(outcomes, done, strict=True):
                outcome.follow_up = follow_up
            unbound = [(i, e) for i, e in enumerate(events) if not outcomes[i].signalled]
            if unbound:
                await self._run_rules(input, unbound, outcomes, wid)
        except (ActivityError, ApplicationError) as exc:
            await workflow.execute_local_activity_method(
                WebhookActivities.fail_event,
                FailEventInput(inbox_id=input.inbox_id, generation=input.generation, error=failure_message(exc)),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            return []
        await workflow.execute_local_activity_method(
            WebhookActivities.complete_event,
            CompleteEventInput(inbox_id=input.inbox_id, generation=input.generation, workflow_id=wid, outcomes=outcomes),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        return outcomes

    async def _follow_up(self, input: WebhookEventInput, event: MappedEvent, key: str) -> tuple[MappedEvent, dict | None]:
        """Do the event's follow-up; returns the event (with its opportunity once located) and what was done."""
        kind = event.follow_up
        if kind is None:
            return event, None
        if kind == "sync_documents":
            started = await workflow.execute_activity_method(
                WebhookActivities.sync_now,
                SyncNowInput(org_id=input.org_id, connection_id=input.connection_id, model=DOCUMENTS_SYNC),
                start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY,
            )  # fmt: skip
            return event, {"kind": kind, "sync": started}
        if kind in ("renew_subscription", "create_subscription"):
            params = {"notification_url": input.webhook_url}
            if kind == "renew_subscription":
                params["subscription_id"] = event.data.get("subscription_id")
            result = await self._sharepoint(input, f"sharepoint.{kind}", params, key)
            return event, {"kind": kind, **result}
        item = await self._sharepoint(
            input, "sharepoint.get_item",
            {"item_id": event.data.get("item_id"), "drive_id": event.data.get("drive_id")}, key,
        )  # fmt: skip
        data = {**event.data, "path": item.get("path"), "name": item.get("name"), "web_url": item.get("web_url"),
                "by_hub": item.get("by_hub", False)}
        located = opportunity_of(item.get("path"))
        match = DocumentMatch(known=False)
        if located is not None and not item.get("folder"):
            match = await workflow.execute_local_activity_method(
                WebhookActivities.match_document,
                DocumentMatchInput(org_id=input.org_id, opportunity_id=located[0], path=located[1]),
                start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY,
            )  # fmt: skip
        if located is None or not match.known:
            return event.model_copy(update={"data": data}), {"kind": kind, "path": item.get("path")}
        data["opportunity_id"] = located[0]
        if match.document and not data["by_hub"]:
            data.update(document=match.document, present=True)
        summary = {"kind": kind, "path": item.get("path"), "document": data.get("document")}
        return event.model_copy(update={"opportunity_id": located[0], "data": data}), summary

    async def _sharepoint(self, input: WebhookEventInput, action: str, params: dict, key: str) -> dict:
        """One SharePoint action on the event's own connection, on the provider's task queue."""
        call = ActionCall(org_id=input.org_id, action=action, params=params, connection_id=input.connection_id,
                          idempotency_key=key)
        return (await execute_action(call)).output

    async def _answer(self, target: str, answer: dict) -> None:
        """Forward an approval click, with the org whose Slack connection delivered it, to the rule run waiting
        for it (gone already: nothing to do)."""
        try:
            await workflow.get_external_workflow_handle_for(RuleRunWorkflow.run, target).signal(
                RuleRunWorkflow.approval, answer)
        except ApplicationError as exc:
            if not _not_found(exc):
                raise

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
             "role": None, "lead": e.data.get("lead")}
            for _, e in unbound
        ]  # fmt: skip
        local = {"ai.score_lead": self._score_lead, "ai.next_action": self._lead_next_action}
        runs = await RuleRunner(input.org_id, subject=wid, local_actions=local).run(events, key_prefix=wid)
        for index, event in unbound:
            outcomes[index].rules_fired = [r.rule for r in runs if r.fired and r.trigger == event.type]

    async def _score_lead(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        """``ai.score_lead``: score the event's lead (or ``lead_id``) and store its score."""
        lead_id = action.params.get("lead_id") or (event.get("lead") or {}).get("id")
        if not lead_id:
            raise ApplicationError(placement(action.name, event)[1] or "no lead", type="NotRunnableHere")
        result: LeadScoreResult = await workflow.execute_activity_method(
            AiActivities.score_lead, ScoreLeadInput(org_id=event["org"], lead_id=str(lead_id)),
            start_to_close_timeout=timedelta(seconds=60), retry_policy=AI_RETRY,
        )  # fmt: skip
        return result.model_dump(mode="json")

    async def _lead_next_action(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        """``ai.next_action`` for a lead: its score and what to do next with it."""
        if not event.get("lead"):
            raise ApplicationError(placement(action.name, event)[1] or "no lead", type="NotRunnableHere")
        scored = await self._score_lead(action, key, event)
        return {"lead_id": scored["lead_id"], "score": scored["score"], "next_action": lead_next_action(scored)}
