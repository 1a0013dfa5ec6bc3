"""Every side effect the workflows need, as Temporal activities with injected dependencies."""

from __future__ import annotations

from collections.abc import Callable

from activities.ai import AiActivities
from activities.connections import ConnectionActivities
from activities.http_action import HttpActions
from activities.opportunities import OpportunityActivities
from activities.rule_runs import RuleActivities
from activities.sync import SyncActivities
from activities.webhooks import WebhookActivities
from hub.runtime import Hub


def build_activities(hub: Hub) -> list[Callable]:
    """The activities of the main task queue, bound to the runtime's dependencies."""
    ai, rules = AiActivities(hub), RuleActivities(hub)
    opportunities = OpportunityActivities(hub, insight=ai.next_action)
    return [opportunities.prepare, opportunities.project, opportunities.send_crm_event, rules.plan, rules.record_runs,
            rules.record_retry, rules.save_run, rules.recheck,
            *WebhookActivities(hub).all(), *ConnectionActivities(hub).lifecycle(),
            HttpActions.from_hub(hub).post, *SyncActivities(hub).main_queue(), *ai.all()]
