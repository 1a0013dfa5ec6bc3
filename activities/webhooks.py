"""Activities of ``WebhookEventWorkflow``: finish an inbox row, or record a failed attempt."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity

from activities.webhook_types import CompleteEventInput, FailEventInput
from hub.runtime import Hub
from hub.store import inbox
from webhooks import metrics

COMPLETE = "webhooks.complete_event"
FAIL = "webhooks.fail_event"
RETRY_BACKOFF = timedelta(seconds=30)


class WebhookActivities:
    """Inbox writes on behalf of the workflow; the runtime is injected."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @activity.defn(name=COMPLETE)
    async def complete_event(self, input: CompleteEventInput) -> bool:
        """Mark the row ``done`` (idempotent: False if it already was, or a newer generation took over)."""
        outcome = {
            "workflow_id": input.workflow_id,
            "events": [o.model_dump(mode="json") for o in input.outcomes],
        }
        async with self.hub.db.session() as session:
            return await inbox.finish(session, input.inbox_id, "done", outcome, generation=input.generation)

    @activity.defn(name=FAIL)
    async def fail_event(self, input: FailEventInput) -> str | None:
        """Count a failed attempt: the row goes back to ``pending`` after a back-off, or ``dead`` at the limit."""
        async with self.hub.db.session() as session:
            status = await inbox.record_failure(
                session, input.inbox_id, input.error, input.generation,
                self.hub.settings.webhook_max_attempts, RETRY_BACKOFF,
            )  # fmt: skip
        if status:
            metrics.FAILURES.labels(status).inc()
        return status
