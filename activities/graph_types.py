"""What the Graph subscription upkeep schedule and its workflow share (``workflows.graph_subscription``,
``activities.sync_schedules``): the workflow's name and input, the action it runs, the schedule's id and
interval."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

GRAPH_SUBSCRIPTION_WORKFLOW = "GraphSubscriptionWorkflow"
CREATE_SUBSCRIPTION = "sharepoint.create_subscription"
UPKEEP_EVERY = timedelta(hours=24)


def graph_subscription_id(org_id: str, connection_id: str) -> str:
    """The id of a connection's upkeep schedule, and of the runs it starts (Temporal adds the time)."""
    return f"graph-subscription/{org_id}/{connection_id}"


class GraphSubscriptionInput(BaseModel):
    """Which connection, and the URL Graph posts its change and lifecycle notifications to."""

    org_id: str
    connection_id: str
    notification_url: str
