"""Deterministic Temporal workflows. ``WORKFLOWS`` is what the worker registers."""

from workflows.ai_training import AiRetrainWorkflow, AiTrainingWorkflow
from workflows.connection import ConnectionWorkflow
from workflows.graph_subscription import GraphSubscriptionWorkflow
from workflows.opportunity import OpportunityWorkflow
from workflows.rule_retry import RuleActionRetryWorkflow
from workflows.rule_runner import RuleRunWorkflow
from workflows.scheduled_rule import ScheduledRuleWorkflow
from workflows.sync import SyncWorkflow
from workflows.webhook_event import WebhookEventWorkflow

WORKFLOWS: list[type] = [
    OpportunityWorkflow, WebhookEventWorkflow, ConnectionWorkflow, SyncWorkflow, GraphSubscriptionWorkflow,
    ScheduledRuleWorkflow, AiTrainingWorkflow, RuleActionRetryWorkflow, AiRetrainWorkflow, RuleRunWorkflow,
]
