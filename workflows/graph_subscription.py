"""GraphSubscriptionWorkflow: keeps a Microsoft connection's Graph change-notification subscription alive.

Each Microsoft connection has a Temporal Schedule (``graph-subscription/{org}/{connection}``, made by
``activities.sync_schedules.ensure_graph_upkeep`` when the hub has a public URL) that starts this workflow every
``UPKEEP_EVERY`` (24 h, well inside the subscription's 4,230-minute lifetime) and at once when the connection
becomes active. A run reads the connection's state (``connection.state``) and skips quietly unless it is
active; then it runs ``sharepoint.create_subscription`` for ``{HUB_PUBLIC_URL}/webhooks/microsoft/{id}`` on
the provider's rate-limited task queue with the standard action retries. That action is idempotent: a live
subscription of this app on the same drive and URL is renewed, so a run never makes a second one. The
``clientState`` is read from the connection's secrets inside the activity: the history holds ids, the URL
and Graph's answer (id, resource, expiry), nothing secret. Lifecycle notifications still renew or recreate
the subscription in between (``workflows.webhook_event``); this run is the safety net when one is lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.connections import ConnectionActivities
    from activities.connector_types import ActionCall, ConnectionRef
    from activities.graph_types import (
        CREATE_SUBSCRIPTION,
        GRAPH_SUBSCRIPTION_WORKFLOW,
        GraphSubscriptionInput,
    )
    from workflows.actions import execute_action

STATE_TIMEOUT = timedelta(seconds=30)
STATE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                          maximum_attempts=10)


class GraphSubscriptionResult(BaseModel):
    """``subscribed`` (created now), ``renewed`` (a live one moved out) or ``skipped`` (connection not active)."""

    status: Literal["subscribed", "renewed", "skipped"]
    subscription_id: str | None = None
    expiration: str | None = None
    reason: str | None = None


@workflow.defn(name=GRAPH_SUBSCRIPTION_WORKFLOW)
class GraphSubscriptionWorkflow:
    """Creates or renews the connection's Graph subscription, once."""

    @workflow.run
    async def run(self, input: GraphSubscriptionInput) -> GraphSubscriptionResult:
        state = await workflow.execute_activity_method(
            ConnectionActivities.state, ConnectionRef(org_id=input.org_id, connection_id=input.connection_id),
            start_to_close_timeout=STATE_TIMEOUT, retry_policy=STATE_RETRY,
        )  # fmt: skip
        if state.status != "active":
            reason = f"connection {input.connection_id} is {state.status if state.exists else 'gone'}"
            workflow.logger.info("Graph subscription upkeep skipped: %s", reason)
            return GraphSubscriptionResult(status="skipped", reason=reason)
        call = ActionCall(org_id=input.org_id, action=CREATE_SUBSCRIPTION, connection_id=input.connection_id,
                          params={"notification_url": input.notification_url},
                          idempotency_key=workflow.info().workflow_id)
        output = (await execute_action(call)).output
        return GraphSubscriptionResult(status="subscribed" if output.get("created") else "renewed",
                                       subscription_id=output.get("id"), expiration=output.get("expiration"))
