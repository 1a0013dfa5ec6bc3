"""AI activities: ``ai.next_action``, ``ai.deal_risk``, ``ai.score_lead``; every result is stored in ``ai_insights``.

``ai.next_action`` is complete without OpenAI. When the org's ``openai`` flag is on and it has an
active ``openai`` connection, the insight it returns carries a ``refinement``: the workflow runs that
``openai.complete_json`` call as ``connector.run_action`` on the ``openai`` provider queue (fairness key and
request budget of the connection, like every provider call; ``workflows/ai_refinement.py``) under the
connection's ``timeout_seconds`` (default 8 s) with its ``model`` (default ``gpt-4o-mini``), then
``ai.refine_next_action`` merges the answer, or keeps the local list when there is none (the reason in the
provenance and the fallback metric). Scores, latency, fallbacks and OpenAI tokens go to the metrics of
``ai.monitoring``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ai_types import (
    DEAL_RISK,
    NEXT_ACTION,
    REFINE_NEXT_ACTION,
    SCORE_LEAD,
    Insight,
    LeadScoreResult,
    OpportunityInsightInput,
    RefineInput,
    ScoreLeadInput,
)
from ai import service
from ai.deals import DealModel
from ai.monitoring import observe_llm, observe_score
from ai.next_action import apply_refinement, recommend_local
from ai.risk import RULES_VERSION, assess
from hub.flags import flag_enabled
from hub.runtime import Hub
from hub.store.ai import write_insight
from hub.store.connections import Connection

DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_LLM_TIMEOUT = 8.0


class AiActivities:
    """The AI activities, bound to the hub runtime (none calls OpenAI: the workflow does, on its queue)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def all(self) -> list:
        """Every AI activity, for the main task queue."""
        return [self.next_action, self.refine_next_action, self.deal_risk, self.score_lead]

    async def _deal_model(self, org_id: str) -> DealModel | None:
        model = await service.active_model(self.hub, org_id, "deals")
        return model if isinstance(model, DealModel) else None

    async def openai_for(self, org_id: str) -> tuple[bool, Connection | None]:
        """(the org's ``openai`` flag, its active ``openai`` connection or None)."""
        async with self.hub.db.session() as session:
            if not await flag_enabled(session, org_id, "openai"):
                return False, None
            conn = await session.scalar(
                select(Connection).where(Connection.org_id == org_id, Connection.provider == "openai",
                                         Connection.status == "active").limit(1)
            )
        return True, conn

    @activity.defn(name=NEXT_ACTION)
    async def next_action(self, input: OpportunityInsightInput) -> Insight:
        """Risk, factors and ranked next actions, computed locally. With the org's OpenAI on, an active
        connection and a caller that runs it (``refine_on_queue``), the insight carries its ``refinement``
        and is stored and counted by ``ai.refine_next_action`` once the workflow has run it."""
        now = input.as_of or datetime.now(UTC)
        wanted, conn = await self.openai_for(input.org_id)
        llm = None
        if conn is not None and input.refine_on_queue:
            llm = (str(conn.config.get("model") or DEFAULT_LLM_MODEL),
                   float(conn.config.get("timeout_seconds") or DEFAULT_LLM_TIMEOUT))
        started, model = time.perf_counter(), await self._deal_model(input.org_id)
        result = recommend_local(input.opp, input.stage, input.checklist, input.events, now, model,
                                 opportunity_id=input.opportunity_id, llm=llm)
        seconds = time.perf_counter() - started
        if llm is not None and conn is not None:
            result["refinement"].update(connection_id=conn.id, local_seconds=seconds)
            return Insight.model_validate(result)
        if wanted:  # OpenAI on, but nothing to refine with
            result["provenance"].update(
                fallback_reason="no_connection" if conn is None else "legacy_workflow",
                fallback="no active openai connection" if conn is None else
                "this workflow run predates the refinement on the openai queue")
        insight = Insight.model_validate(result)
        _observe(input.org_id, "next_action", insight, model, seconds)
        await self._store(input, "next_action", insight)
        return insight

    @activity.defn(name=REFINE_NEXT_ACTION)
    async def refine_next_action(self, input: RefineInput) -> Insight:
        """Merge the OpenAI answer the workflow got on the ``openai`` queue into the insight (or fall back to
        the local list, the reason recorded), then count and store it."""
        refinement = input.insight.refinement
        if refinement is None:
            raise ApplicationError("the insight has no refinement to apply", type="NothingToRefine",
                                   non_retryable=True)
        result = apply_refinement(input.insight.model_dump(mode="json"), input.answer, input.fallback,
                                  input.latency_ms)
        insight = Insight.model_validate(result)
        model = await self._deal_model(input.request.org_id)
        _observe(input.request.org_id, "next_action", insight, model,
                 refinement.local_seconds + input.latency_ms / 1000)
        await self._store(input.request, "next_action", insight)
        return insight

    @activity.defn(name=DEAL_RISK)
    async def deal_risk(self, input: OpportunityInsightInput) -> Insight:
        """Risk and its factors only (no next actions, never OpenAI)."""
        now = input.as_of or datetime.now(UTC)
        started, model = time.perf_counter(), await self._deal_model(input.org_id)
        found = assess(input.opp, input.stage, input.events, now, model, input.opportunity_id)
        insight = Insight(
            risk_score=found.risk_score,
            win_probability=found.win_probability,
            risk_factors=[f.model_dump() for f in found.factors],
            model_version=found.model_version,
            source=found.source,
            provenance={"engine": "local", "rules_version": RULES_VERSION, "as_of": now.isoformat(),
                        "output": [s.code for s in found.signals]},
        )
        _observe(input.org_id, "deal_risk", insight, model, time.perf_counter() - started)
        await self._store(input, "deal_risk", insight)
        return insight

    @activity.defn(name=SCORE_LEAD)
    async def score_lead(self, input: ScoreLeadInput) -> LeadScoreResult:
        """Score (and store) a lead with the org's lead model or the prior."""
        _, score = await service.score_lead(self.hub, input.org_id, input.lead_id, input.lead)
        return LeadScoreResult(lead_id=input.lead_id, score=score.score, low=score.low, high=score.high,
                               factors=[f.model_dump() for f in score.factors],
                               model_version=score.model_version, source=score.source)

    async def _store(self, input: OpportunityInsightInput, kind: str, insight: Insight) -> None:
        await self.hub.db.write(write_insight, {
            "org_id": input.org_id, "subject_type": "opportunity", "subject_id": input.opportunity_id, "kind": kind,
            "model_version": insight.model_version, "source": insight.source, "inputs": input.model_dump(mode="json"),
            "output": insight.model_dump(mode="json", exclude={"provenance", "refinement"}),
            "provenance": insight.provenance,
        })  # fmt: skip


def _observe(org_id: str, kind: str, insight: Insight, model: DealModel | None, seconds: float) -> None:
    """Metrics of one insight (``ai.monitoring``): the model's win probability feeds the drift gauge."""
    p = insight.win_probability
    observe_score(org_id, kind, insight.model_version, insight.source, seconds,
                  bins=model.metrics.get("score_bins") if model else None, score=None if p is None else 100 * p)
    observe_llm(org_id, insight.provenance)
