"""Types of the OpportunityWorkflow, its updates/signals and its activities, plus its pure view.

Everything here is deterministic and free of I/O, so the workflow imports it through the sandbox.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from activities.ai_types import Insight, OpportunityInsightInput
from activities.rule_types import RulePlan, RuleRun

# State lists are bounded so that continue-as-new carries a small payload.
MAX_RULE_RUNS = 50
MAX_EVENTS = 50
MAX_SEEN_EVENTS = 500


def workflow_id(org_id: str, opportunity_id: str) -> str:
    """The one workflow id of an opportunity."""
    return f"opportunity/{org_id}/{opportunity_id}"


def body_hash(opp: dict) -> str:
    """Content hash of an opportunity body (canonical JSON), to tell a changed PUT from a repeat."""
    return hashlib.sha256(json.dumps(opp, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Actor(BaseModel):
    """Who asks for a change in the CRM: a user id and their sales role."""

    id: str
    role: str


class PinnedPipeline(BaseModel):
    """The pipeline version an opportunity is bound to: the full resource document."""

    name: str
    version: int
    content_hash: str = ""
    spec: dict


def stages_of(pipeline: PinnedPipeline) -> list[dict]:
    """The pipeline's stages in order."""
    stages = list(pipeline.spec.get("spec", {}).get("stages", []))
    return sorted(stages, key=lambda s: (s.get("order") is None, s.get("order") or 0, stages.index(s)))


def stage_of(pipeline: PinnedPipeline, key: str) -> dict | None:
    """One stage of the pipeline by key, or None."""
    return next((s for s in stages_of(pipeline) if s.get("key") == key), None)


class TransitionRecord(BaseModel):
    """One accepted stage change."""

    seq: int
    from_stage: str | None
    to_stage: str
    actor: Actor | None = None
    at: datetime
    pipeline_version: int
    reason: str | None = None


class StageVisit(BaseModel):
    """A stay in a stage."""

    stage: str
    entered_at: datetime
    exited_at: datetime | None = None


class Effect(BaseModel):
    """Durable work queued by a handler and done in order by the workflow's main loop."""

    kind: Literal["transition", "updated", "event", "project", "retry", "date"]
    seq: int
    data: dict = Field(default_factory=dict)


DATE_RULES_SIGNAL = "date_rules"  # OpportunityWorkflow's signal carrying new DateRules
CLOSE_DATE_APPROACHING = "opportunity.close_date_approaching"
STALE = "opportunity.stale"
DAY_SECONDS = 86400


class DateRules(BaseModel):
    """What an opportunity arms durable timers for: the days of the org's enabled relative-date rules, by trigger
    (``{"opportunity.stale": [14]}``), and the length of a day (``HUB_DAY_SECONDS``; shorter in tests only)."""

    days: dict[str, list[int]] = Field(default_factory=dict)
    day_seconds: int = DAY_SECONDS
    read_at: datetime | None = None  # when the rules were read: an older read never replaces a newer one

    def newer_than(self, other: DateRules | None) -> bool:
        """Whether these rules should replace ``other`` (read no earlier, or either read time unknown)."""
        return other is None or self.read_at is None or other.read_at is None or self.read_at >= other.read_at


class OpportunityState(BaseModel):
    """Everything the workflow knows; carried across continue-as-new."""

    org_id: str
    opportunity_id: str
    opp: dict
    body_hash: str
    pipeline: PinnedPipeline
    stage: str
    checklist: dict[str, bool] = Field(default_factory=dict)
    documents: dict[str, bool] = Field(default_factory=dict)
    approvals: dict[str, dict] = Field(default_factory=dict)
    history: list[TransitionRecord] = Field(default_factory=list)
    visits: list[StageVisit] = Field(default_factory=list)
    insight: dict | None = None
    rule_runs: list[RuleRun] = Field(default_factory=list)
    events: list[dict] = Field(default_factory=list)
    seen_events: list[str] = Field(default_factory=list)
    failures: list[dict] = Field(default_factory=list)
    seq: int = 0
    revision: int = 0
    pending: list[Effect] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    runs: int = 1
    closed: dict | None = None  # {"outcome": "lost", "reason", "actor", "at"} once closed lost
    archived: bool = False
    hub_fields: dict[str, Any] = Field(default_factory=dict)  # dotted path -> value set by rules (hub-owned)
    date_rules: DateRules | None = None  # None: not known yet (armed from the next transition's preparation)
    date_fired: dict[str, str] = Field(default_factory=dict)  # "trigger:days" -> the arming it fired for
    last_activity_at: datetime | None = None  # what opportunity.stale counts from (see DatePoint)
    crm_events: list[dict] = Field(default_factory=list)  # signed CRM callbacks: type, event_id, at, delivered, status

    @property
    def owner(self) -> str | None:
        """The owner's id: ``opp.owner.id``, ``opp.owner`` as a string, or ``opp.owner_id``."""
        owner = self.opp.get("owner")
        if isinstance(owner, dict):
            owner = owner.get("id")
        owner = owner or self.opp.get("owner_id")
        return str(owner) if owner else None


class CloseRequest(BaseModel):
    """Close the opportunity lost (``reason`` required), and/or archive it (out of the default lists)."""

    outcome: Literal["lost"] | None = None
    reason: str | None = None
    actor: Actor
    archive: bool = False


class OpportunityInput(BaseModel):
    """Workflow input: the first body and the pinned pipeline, or the state carried by continue-as-new."""

    org_id: str
    opportunity_id: str
    opp: dict
    body_hash: str
    pipeline: PinnedPipeline
    state: OpportunityState | None = None
    history_limit: int = 5000
    registration: str | None = None  # the PUT that starts this workflow (see UpsertRequest.registration)


class UpsertRequest(BaseModel):
    """A new body for the opportunity (PUT).

    ``registration`` names the PUT: sent with Update-with-Start, the workflow that this very PUT started
    answers it with its state (a workflow started by an earlier PUT judges the body as usual)."""

    opp: dict
    body_hash: str
    registration: str | None = None


class TransitionRequest(BaseModel):
    """Move to another stage (``reason``: why, e.g. a rule's, kept in the history)."""

    to: str
    actor: Actor
    reason: str | None = None


class ChecklistRequest(BaseModel):
    """Mark checklist items done (True) or undone (False)."""

    items: dict[str, bool]
    actor: Actor | None = None


class DomainSource(BaseModel):
    """Where a domain event came from."""

    provider: str
    event_id: str


class DomainEvent(BaseModel):
    """A domain event signalled to the opportunity (webhooks, or the API for document marks)."""

    type: str
    data: dict = Field(default_factory=dict)
    source: DomainSource


class MigrateRequest(BaseModel):
    """Re-pin the opportunity to another (newer) version of its pipeline."""

    pipeline: PinnedPipeline


class ProjectInput(BaseModel):
    """The state to write into the projection tables."""

    workflow_id: str
    state: OpportunityState


class PrepareInput(BaseModel):
    """Before a transition's effects: the rule events to plan and the provider action about to be used.

    ``opp``, when set, is the opportunity the events and the insight are all about, sent once: the events and
    ``insight.opp`` then leave it out (three copies of it were two thirds of this input in history)."""

    org_id: str
    events: list[dict]
    provider_action: str = "sharepoint.ensure_folders"
    insight: OpportunityInsightInput | None = None
    opp: dict | None = None

    def whole(self) -> PrepareInput:
        """This input with the shared ``opp`` back in every event and in the insight's input."""
        if self.opp is None:
            return self
        insight = self.insight.model_copy(update={"opp": self.opp}) if self.insight is not None else None
        return self.model_copy(update={"events": [{**e, "opp": self.opp} for e in self.events], "insight": insight,
                                       "opp": None})  # fmt: skip


class Preparation(BaseModel):
    """The rule plan, and whether the org has a connection for the provider action and a CRM callback URL;
    the AI insight when asked for (None if it could not be computed: ``insight_error`` says why)."""

    plan: RulePlan
    provider_connected: bool
    crm_callback: bool
    insights: bool = True  # the org's ai.insights flag: recompute the insight on stage changes
    insight: Insight | None = None
    insight_error: str | None = None
    date_rules: DateRules | None = None  # the relative-date rules to arm timers for


class CrmEventInput(BaseModel):
    """One signed event for the org's CRM callback URL."""

    org_id: str
    event_id: str
    type: str
    occurred_at: datetime
    data: dict


class CrmDelivery(BaseModel):
    """Outcome of a CRM callback: delivered (status) or skipped (no callback URL)."""

    delivered: bool
    status: int | None = None
    url: str | None = None


class StageMetrics(BaseModel):
    """Completion and time of one stage."""

    stage: str
    name: str
    checklist: dict[str, bool]
    documents: dict[str, bool]
    checklist_pct: float
    documents_pct: float
    entered_at: datetime | None
    time_spent_seconds: float
    visits: int


class OpportunityView(BaseModel):
    """What ``GET /v1/opportunities/{id}`` answers."""

    id: str
    org_id: str
    stage: str
    stage_name: str
    pipeline: dict[str, Any]
    opportunity: dict
    history: list[TransitionRecord]
    stages: list[StageMetrics]
    approvals: dict[str, dict]
    insight: dict | None
    rule_runs: list[RuleRun]
    failures: list[dict]
    pending_effects: int
    revision: int
    updated_at: datetime
    closed: dict | None = None
    archived: bool = False
    crm_events: list[dict] = Field(default_factory=list)
    source: Literal["workflow", "projection"] = "workflow"


class OpportunitySummary(BaseModel):
    """One opportunity in ``GET /v1/opportunities``."""

    id: str
    name: str | None
    stage: str
    pipeline: str
    pipeline_version: int
    branch: str | None
    owner: str | None
    amount: float | None
    close_date: str | None
    closed: dict | None
    archived: bool
    updated_at: datetime


class TransitionCheck(BaseModel):
    """Whether a move could be made now, and every requirement still unmet (nothing is changed)."""

    to: str
    allowed: bool
    unmet: list[dict]


def _pct(values: dict[str, bool]) -> float:
    return round(100.0 * sum(values.values()) / len(values), 1) if values else 100.0


def build_view(state: OpportunityState, now: datetime, source: Literal["workflow", "projection"]) -> OpportunityView:
    """The opportunity as the API shows it, with stage metrics computed at ``now``."""
    metrics = []
    for spec in stages_of(state.pipeline):
        key = spec["key"]
        visits = [v for v in state.visits if v.stage == key]
        metrics.append(
            StageMetrics(
                stage=key,
                name=spec.get("name", key),
                checklist={i: state.checklist.get(i, False) for i in spec.get("checklist", [])},
                documents={d: state.documents.get(d, False) for d in spec.get("documents", [])},
                checklist_pct=_pct({i: state.checklist.get(i, False) for i in spec.get("checklist", [])}),
                documents_pct=_pct({d: state.documents.get(d, False) for d in spec.get("documents", [])}),
                entered_at=visits[-1].entered_at if visits else None,
                time_spent_seconds=sum(
                    max(0.0, ((v.exited_at or now) - v.entered_at).total_seconds()) for v in visits
                ),
                visits=len(visits),
            )
        )
    current = stage_of(state.pipeline, state.stage) or {}
    return OpportunityView(
        id=state.opportunity_id,
        org_id=state.org_id,
        stage=state.stage,
        stage_name=current.get("name", state.stage),
        pipeline={
            "name": state.pipeline.name,
            "version": state.pipeline.version,
            "content_hash": state.pipeline.content_hash,
        },
        opportunity=state.opp,
        history=state.history,
        stages=metrics,
        approvals=state.approvals,
        insight=state.insight,
        rule_runs=state.rule_runs,
        failures=state.failures,
        pending_effects=len(state.pending),
        revision=state.revision,
        updated_at=state.updated_at,
        closed=state.closed,
        archived=state.archived,
        crm_events=state.crm_events,
        source=source,
    )


def close_instant(value: object) -> datetime | None:
    """The close date as an instant: an ISO date is 00:00 UTC that day, a datetime without a zone is UTC;
    None when absent or unreadable."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value or " " in value else date.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


@dataclass(frozen=True)
class DatePoint:
    """When one relative-date rule's timer fires for an opportunity, and the arming it belongs to.

    ``opportunity.close_date_approaching`` (``days_before: N``) is due N days before the close date, and only
    until the close date (a rule applied later, or a close date moved nearer, fires at once; one already past,
    never); its arming is the close date, so a changed close date re-arms it. ``opportunity.stale`` (``days: N``)
    is due N days after the last activity; its arming is that instant, so any activity re-arms it. A point fires
    at most once per arming (``OpportunityState.date_fired``)."""

    trigger: str
    days: int
    at: datetime
    arming: str
    until: datetime | None = None

    @property
    def key(self) -> str:
        """Where ``date_fired`` records it."""
        return f"{self.trigger}:{self.days}"

    def event(self) -> dict:
        """The data of the rule event it raises (``event.*`` in conditions and templates)."""
        field = "days_before" if self.trigger == CLOSE_DATE_APPROACHING else "days"
        since = "close_date" if self.trigger == CLOSE_DATE_APPROACHING else "last_activity_at"
        return {"type": self.trigger, "days": self.days, field: self.days, since: self.arming,
                "due_at": self.at.isoformat()}


def date_points(state: OpportunityState) -> list[DatePoint]:
    """Every relative-date point of an open opportunity (none once closed or archived, or before its date
    rules are known)."""
    rules = state.date_rules
    if rules is None or state.closed is not None or state.archived:
        return []
    day = timedelta(seconds=rules.day_seconds)
    points = []
    close = close_instant(state.opp.get("close_date"))
    if close is not None:
        points += [DatePoint(CLOSE_DATE_APPROACHING, n, close - n * day, close.isoformat(), until=close)
                   for n in rules.days.get(CLOSE_DATE_APPROACHING, [])]
    since = state.last_activity_at or state.history[-1].at
    points += [DatePoint(STALE, n, since + n * day, since.isoformat()) for n in rules.days.get(STALE, [])]
    return points
