"""AI activities: ``ai.next_action``, ``ai.deal_risk``, ``ai.score_lead``; every result is stored in ``ai_insights``.

``ai.next_action`` is complete without OpenAI. When the org's ``openai`` flag is on and it has an
active ``openai`` connection, the local list is refined through ``openai.complete_json`` (run in-process
through ``connector.run_action``'s code, so credentials, base URL, error mapping and the draw from the
connection's request budget are the connector's), under the connection's ``timeout_seconds`` (default 8 s) with its ``model`` (default
``gpt-4o-mini``); any failure falls back to the local list and the reason is in the provenance. Scores,
latency, fallbacks and OpenAI tokens go to the metrics of ``ai.monitoring``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import select
from temporalio import activity

from activities.ai_types import (
    DEAL_RISK,
    NEXT_ACTION,
    SCORE_LEAD,
    Insight,
    LeadScoreResult,
    OpportunityInsightInput,
    ScoreLeadInput,
)
from activities.connections import ConnectionActivities
from activities.connector_types import ActionCall
from ai import service
from ai.deals import DealModel
from ai.monitoring import observe_llm, observe_score
from ai.next_action import Complete, recommend
from ai.risk import RULES_VERSION, assess
from hub.flags import flag_enabled
from hub.runtime import Hub
from hub.store.ai import record_insight
from hub.store.connections import Connection

DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_LLM_TIMEOUT = 8.0


class AiActivities:
    """The AI activities, bound to the hub runtime; OpenAI calls go through the connector code."""

    def __init__(self, hub: Hub, connections: ConnectionActivities | None = None) -> None:
        self.hub = hub
        self.connections = connections or ConnectionActivities(hub)

    def all(self) -> list:
        """Every AI activity, for the main task queue."""
        return [self.next_action, self.deal_risk, self.score_lead]

    async def _deal_model(self, org_id: str) -> DealModel | None:
        model = await service.active_model(self.hub, org_id, "deals")
        return model if isinstance(model, DealModel) else None

    async def openai_for(self, org_id: str) -> tuple[Complete | None, str, float]:
        """(complete, model, timeout) when the org has OpenAI on and an active connection, else (None, ...)."""
        async with self.hub.db.session() as session:
            if not await flag_enabled(session, org_id, "openai"):
                return None, DEFAULT_LLM_MODEL, DEFAULT_LLM_TIMEOUT
            conn = await session.scalar(
                select(Connection).where(Connection.org_id == org_id, Connection.provider == "openai",
                                         Connection.status == "active").limit(1)
            )
        if conn is None:
            return None, DEFAULT_LLM_MODEL, DEFAULT_LLM_TIMEOUT
        model = str(conn.config.get("model") or DEFAULT_LLM_MODEL)
        timeout = float(conn.config.get("timeout_seconds") or DEFAULT_LLM_TIMEOUT)
        connection_id = conn.id

        async def complete(params: dict) -> dict:
            call = ActionCall(org_id=org_id, action="openai.complete_json", params=params,
                              connection_id=connection_id)
            return (await self.connections.run_action(call)).output

        return complete, model, timeout

    @activity.defn(name=NEXT_ACTION)
    async def next_action(self, input: OpportunityInsightInput) -> Insight:
        """Risk, factors and ranked next best actions; refined by OpenAI when the org has it on."""
        now = input.as_of or datetime.now(UTC)
        complete, llm_model, timeout = await self.openai_for(input.org_id)
        started, model = time.perf_counter(), await self._deal_model(input.org_id)
        result = await recommend(
            input.opp, input.stage, input.checklist, input.events, now, model,
            opportunity_id=input.opportunity_id, complete=complete, llm_model=llm_model, timeout=timeout,
        )
        insight = Insight.model_validate(result)
        _observe(input.org_id, "next_action", insight, model, time.perf_counter() - started)
        await self._store(input, "next_action", insight)
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
        async with self.hub.db.session() as session:
            await record_insight(
                session, input.org_id, "opportunity", input.opportunity_id, kind, insight.model_version,
                insight.source, inputs=input.model_dump(mode="json"),
                output=insight.model_dump(mode="json", exclude={"provenance"}), provenance=insight.provenance,
            )


def _observe(org_id: str, kind: str, insight: Insight, model: DealModel | None, seconds: float) -> None:
    """Metrics of one insight (``ai.monitoring``): the model's win probability feeds the drift gauge."""
    p = insight.win_probability
    observe_score(org_id, kind, insight.model_version, insight.source, seconds,
                  bins=model.metrics.get("score_bins") if model else None, score=None if p is None else 100 * p)
    observe_llm(org_id, insight.provenance)
