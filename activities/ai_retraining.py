"""``ai.retrain``: retrain an org's deal and lead models from the hub's own outcomes (champion / challenger).

A Temporal Schedule per org (``ai-retrain/{org}``, ``PUT /v1/ai/retraining``) starts ``AiRetrainWorkflow``,
which runs this activity on the training queue. The outcomes:

* **Deals** — the org's opportunities: won on the day one entered its pipeline's last stage (PEAK: Keep), lost
  when closed lost in the hub (``POST /v1/opportunities/{id}:close-lost``, on the day it was closed) or, for bodies
  from a CRM that tracks it itself, when the body says ``status: lost`` (on the projection's last update); value
  ``opp.amount``, product / account (or company) / owner from the body, and the domain events its workflow
  recorded (calls, documents, payments, contracts: the deal model's integration signals). Dates are the hub's
  (first seen; entered the last stage; closed lost) unless the body carries them, as a CRM importing its history
  does: ``engaged_at`` (or ``created_at``) and, for a closed deal, ``closed_at``.
* **Leads** — the org's leads whose fields carry the outcome column (``Converted``), in creation order.

``ai.retrain.challenge_*`` decides; the challenger is stored either way (``origin: retrain``, the decision in
``metrics.challenge``) and becomes active only when promoted. A pinned model is never replaced.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)

from activities.ai_types import (
    AI_RETRAIN_WORKFLOW,
    RETRAIN,
    RetrainInput,
    RetrainResult,
    ai_retrain_schedule_id,
)
from activities.connector_types import org_priority
from activities.opportunity_types import PinnedPipeline, stages_of
from ai import service
from ai.deals import Deal, DealModel, parse_date
from ai.leads import LeadMapping, LeadModel
from ai.retrain import Decision, challenge_deals, challenge_leads
from ai.risk import deal_from_opp
from ai.tabular import DataError, to_float
from hub.runtime import Hub
from hub.store.ai import AiModel, Lead, active_model_row
from hub.store.opportunities import OpportunityRecord, StageVisitRecord
from hub.temporal import upsert_schedule

LOST = "lost"


@dataclass(frozen=True)
class Outcome:
    """An opportunity as the deal model and the forecast read it."""

    record: OpportunityRecord
    created: date
    won: bool | None
    closed: date | None
    value: float


def _day(at: datetime) -> date:
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).astimezone(UTC).date()


async def opportunity_outcomes(session, org_id: str, pipeline: str | None = None) -> list[Outcome]:  # noqa: ANN001
    """The org's opportunities (on one pipeline, or all) with their outcome so far."""
    query = select(OpportunityRecord).where(OpportunityRecord.org_id == org_id)
    visits = select(StageVisitRecord).where(StageVisitRecord.org_id == org_id)
    if pipeline is not None:
        query = query.where(OpportunityRecord.pipeline_name == pipeline)
        visits = visits.where(StageVisitRecord.pipeline_name == pipeline)
    entered = {(v.opportunity_id, v.stage): v.entered_at for v in await session.scalars(visits)}
    out = []
    for r in await session.scalars(query.order_by(OpportunityRecord.id)):
        opp = r.state.get("opp") or {}
        last = (stages_of(PinnedPipeline.model_validate(r.state["pipeline"])) or [{}])[-1].get("key")
        won_at = entered.get((r.id, last)) if r.stage == last else None
        closed_lost = (r.state.get("closed") or {}).get("outcome") == LOST
        lost = not won_at and (closed_lost or str(opp.get("status") or "").casefold() == LOST)
        lost_at = _closed_at(r.state["closed"]) if closed_lost else None
        closed = _day(won_at) if won_at else (lost_at or _day(r.updated_at)) if lost else None
        if closed is not None:
            closed = parse_date(opp.get("closed_at")) or closed
        created = parse_date(opp.get("engaged_at") or opp.get("created_at")) or _day(r.created_at)
        out.append(Outcome(r, created, True if won_at else False if lost else None, closed,
                           to_float(opp.get("amount")) or 0.0))
    return out


def _closed_at(closed: dict) -> date | None:
    try:
        return _day(datetime.fromisoformat(str(closed.get("at"))))
    except ValueError:
        return None


def as_deal(o: Outcome) -> Deal:
    """An outcome as the deal model's ``Deal`` (``ai.risk.deal_from_opp``: the body and the events its workflow
    recorded), created when the hub first saw it; the close date it expected is not used (it moves until close)."""
    deal = deal_from_opp(o.record.state.get("opp") or {}, o.record.id, o.record.state.get("events") or [])
    return replace(deal, stage=o.record.stage, won=None if o.won is None else int(o.won), value=o.value or None,
                   created=o.created, closed=o.closed, expected_close=None)


class AiRetraining:
    """The retraining activity, bound to the hub runtime."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @activity.defn(name=RETRAIN)
    async def retrain(self, input: RetrainInput) -> RetrainResult:
        """Challenge the org's deal and lead models; promote the challengers that win."""
        outcomes: dict[str, dict] = {}
        for kind in ("deals", "leads"):
            try:
                outcomes[kind] = await self._challenge(input.org_id, kind)
            except DataError as exc:
                outcomes[kind] = {"promoted": False, "reason": f"not retrained: {exc}"}
        return RetrainResult(org_id=input.org_id, outcomes=outcomes)

    async def _challenge(self, org_id: str, kind: str) -> dict:
        async with self.hub.db.session() as session:
            current = await active_model_row(session, org_id, kind)
            if current is not None and current.pinned:
                return {"promoted": False, "reason": f"the active model {current.id} is pinned"}
            if kind == "deals":
                data = [as_deal(o) for o in await opportunity_outcomes(session, org_id)]
            else:
                leads = list(await session.scalars(select(Lead).where(Lead.org_id == org_id)
                                                   .order_by(Lead.created_at, Lead.id)))
        champion = await service.active_model(self.hub, org_id, kind)
        if kind == "deals":
            model, decision = await asyncio.to_thread(
                challenge_deals, data, champion if isinstance(champion, DealModel) else None)
        else:
            mapping = LeadMapping()
            labelled = [(service.lead_record(lead.data), lead.created_at) for lead in leads]
            labelled = [(r, t) for r, t in labelled if mapping.outcome(r) is not None]
            model, decision = await asyncio.to_thread(
                challenge_leads, [r for r, _ in labelled], champion if isinstance(champion, LeadModel) else None,
                [_day(t).isoformat() for _, t in labelled], mapping)
        return await self._store(org_id, model, decision)

    async def _store(self, org_id: str, model: DealModel | LeadModel, decision: Decision) -> dict:
        model.metrics["challenge"] = decision.model_dump()
        async with self.hub.db.session() as session:
            same = await session.scalar(select(AiModel.id).where(
                AiModel.org_id == org_id, AiModel.kind == decision.kind, AiModel.version == model.version))
        if same is not None:
            return {**decision.model_dump(), "promoted": False, "model_id": same,
                    "reason": "unchanged: this history was trained on before"}
        row = await service.register_model(self.hub, org_id, model, "retrain", origin="retrain",
                                           activate=decision.promoted)
        return {**decision.model_dump(), "model_id": row.id}


def _schedule(org_id: str, every: timedelta, task_queue: str, paused: bool) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(AI_RETRAIN_WORKFLOW, RetrainInput(org_id=org_id),
                                           id=ai_retrain_schedule_id(org_id), task_queue=task_queue,
                                           priority=org_priority(org_id)),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(paused=paused, note=f"retrain the AI models of org {org_id}"),
    )


async def ensure_retraining(client: Client, org_id: str, every: timedelta, task_queue: str,
                            paused: bool = False) -> ScheduleHandle:
    """Create the org's retraining schedule, or set its interval and paused state."""
    handle, _ = await upsert_schedule(client, ai_retrain_schedule_id(org_id), _schedule(org_id, every, task_queue, paused))
    return handle
