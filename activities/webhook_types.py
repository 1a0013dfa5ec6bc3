"""Inputs and outputs of ``WebhookEventWorkflow`` and its activities (``webhooks.*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MATCH_DOCUMENT = "webhooks.match_document"
SYNC_NOW = "webhooks.sync_now"

#: Provider work an event asks for before it is signalled (``WebhookScheme.follow_up`` of connectors/events.py).
FollowUp = Literal["renew_subscription", "create_subscription", "sync_documents", "locate_document"]


class MappedEvent(BaseModel):
    """One domain event of an inbox event, as mapped by ``connectors.events``, and the work it asks for."""

    type: str
    opportunity_id: str | None = None
    data: dict = Field(default_factory=dict)
    follow_up: FollowUp | None = None


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
    webhook_url: str | None = Field(default=None, description="where the connection's provider posts (Graph subscriptions)")


class EventOutcome(BaseModel):
    """What happened to one domain event: signalled to its opportunity, or handled by org-level rules."""

    type: str
    opportunity_id: str | None = None
    signalled: bool = False
    note: str = ""
    rules_fired: list[str] = Field(default_factory=list)
    follow_up: dict | None = None  # what the event's follow-up did (kind and its result)


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


class DocumentMatchInput(BaseModel):
    """A changed file under an opportunity's folder: which required document is it?"""

    org_id: str
    opportunity_id: str
    path: str = Field(description="below the opportunity's folder, e.g. '03 Acquire/Proposal/Acme - Proposal.docx'")


class DocumentMatch(BaseModel):
    """Whether the opportunity is known to the hub and the required document the file is (if any)."""

    known: bool
    document: str | None = None


class SyncNowInput(BaseModel):
    """Run one sync of a connection now."""

    org_id: str
    connection_id: str
    model: str
