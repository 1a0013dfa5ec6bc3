"""Inputs and outputs of ``WebhookEventWorkflow`` and its activities (``webhooks.*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MappedEvent(BaseModel):
    """One domain event of an inbox event, as mapped by ``connectors.events``."""

    type: str
    opportunity_id: str | None = None
    data: dict = Field(default_factory=dict)


class WebhookEventInput(BaseModel):
    """One inbox event to process: where it came from and its domain events."""

    inbox_id: str
    generation: int = 0
    org_id: str
    provider: str
    connection_id: str
    event_id: str
    event_type: str
    events: list[MappedEvent] = Field(default_factory=list)


class EventOutcome(BaseModel):
    """What happened to one domain event: signalled to its opportunity, or handled by org-level rules."""

    type: str
    opportunity_id: str | None = None
    signalled: bool = False
    note: str = ""
    rules_fired: list[str] = Field(default_factory=list)


class CompleteEventInput(BaseModel):
    """Mark an inbox row done with the outcome of each of its domain events."""

    inbox_id: str
    generation: int
    workflow_id: str
    outcomes: list[EventOutcome] = Field(default_factory=list)


class FailEventInput(BaseModel):
    """Record a failed processing attempt of an inbox row (it is retried or dead-lettered)."""

    inbox_id: str
    generation: int
    error: str
