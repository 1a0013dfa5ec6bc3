"""``/v1/leads/{id}``: the CRM registers a lead; the hub stores it and scores it (0–100, 90% interval, factors).

Scores come from the org's trained lead model (``source: model``) or, until it has trained one, from the
documented prior scorecard (``source: prior``). Every score is also recorded in ``ai_insights``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from ai.service import score_lead
from hub.deps import HubDep, ReaderKey, SessionDep, WriterKey
from hub.problems import Problem
from hub.store.ai import Lead
from rules import limits

router = APIRouter(prefix="/v1/leads", tags=["leads"])
LeadId = Annotated[str, Path(min_length=1, max_length=200)]


class LeadIn(BaseModel):
    """A lead as the CRM sends it. ``fields`` holds the attributes the lead model reads (e.g. the
    columns of the org's training CSV: ``{"Lead Source": "Google", "TotalVisits": 5}``); other top-level
    fields are kept and read too."""

    model_config = ConfigDict(extra="allow")

    email: str | None = Field(default=None, max_length=320)
    company: str | None = Field(default=None, max_length=500)
    source: str | None = Field(default=None, max_length=200)
    fields: dict[str, Any] = Field(default_factory=dict)


class LeadScoreOut(BaseModel):
    """The lead's score, its 90% interval, the top factors, the model version and the source; ``moment`` says what
    the score knew: ``creation`` (the lead as created), ``engagement`` (and its website engagement) or ``contact``
    (and what sales last did with it)."""

    score: float
    low: float
    high: float
    factors: list[dict]
    model_version: str
    source: str
    moment: str
    scored_at: datetime | None


class LeadPublic(BaseModel):
    """A stored lead and its latest score."""

    id: str
    data: dict
    score: LeadScoreOut | None
    created_at: datetime
    updated_at: datetime


def _public(lead: Lead) -> LeadPublic:
    score = None
    if lead.score is not None:
        score = LeadScoreOut(score=lead.score, low=lead.low or 0.0, high=lead.high or 0.0, factors=lead.factors,
                             model_version=lead.model_version or "", source=lead.source or "",
                             moment=lead.moment or "creation",
                             scored_at=lead.scored_at)
    return LeadPublic(id=lead.id, data=lead.data, score=score, created_at=lead.created_at,
                      updated_at=lead.updated_at)


@router.put("/{lead_id}")
async def put_lead(lead_id: LeadId, body: LeadIn, hub: HubDep, key: WriterKey) -> LeadPublic:
    """Register (or replace) a lead and score it with what is known of it now; send it again as engagement and
    sales contact arrive and it is re-scored at that moment."""
    fields = body.model_dump(mode="json", exclude_none=True)
    limits.check(fields, "lead")
    lead, _ = await score_lead(hub, key.org_id, lead_id, fields)
    return _public(lead)


@router.get("/{lead_id}")
async def get_lead(lead_id: LeadId, session: SessionDep, key: ReaderKey) -> LeadPublic:
    """The lead and its score; another org's lead is 404."""
    lead = await session.get(Lead, (key.org_id, lead_id))
    if lead is None:
        raise Problem(404, f"lead {lead_id!r} not found")
    return _public(lead)
