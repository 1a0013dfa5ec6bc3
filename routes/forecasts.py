"""``GET /v1/forecast``: expected won revenue per month or quarter with an 80% interval and scenarios.

Learned from the org's opportunities on the pipeline (``ai.forecast``): each is created when the hub first saw
it, valued at ``opp.amount``, and counts as **won** from the day it entered the pipeline's last stage (PEAK:
Keep); until opportunities can be closed lost, every other one is open. Open deals are simulated with the time to
close, stage conversion and calendar pattern of the closed ones; deals not yet created come in at the recent rate.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from activities.opportunity_types import PinnedPipeline, stages_of
from ai.forecast import Forecast, ForecastDeal, Horizon, forecast
from ai.tabular import to_float
from hub.deps import ReaderKey, SessionDep
from hub.problems import Problem
from hub.store.opportunities import StageVisitRecord, list_for_pipeline

router = APIRouter(prefix="/v1/forecast", tags=["ai"])
SIMULATIONS = 1000


def _as_date(at: datetime) -> date:
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).astimezone(UTC).date()


@router.get("")
async def get_forecast(
    session: SessionDep,
    key: ReaderKey,
    pipeline: Annotated[str, Query(min_length=1, max_length=200, description="pipeline name, e.g. peak")],
    horizon: Horizon = "month",
    periods: Annotated[int, Query(ge=1, le=12)] = 3,
    as_of: Annotated[date | None, Query(description="forecast date (default today, UTC)")] = None,
) -> Forecast:
    """Won revenue per period from ``as_of``: expected, 80% interval, commit / best case / pipeline."""
    records = await list_for_pipeline(session, key.org_id, pipeline)
    if not records:
        raise Problem(404, f"no opportunities on pipeline {pipeline!r}")
    won_stage = {r.id: (stages_of(PinnedPipeline.model_validate(r.state["pipeline"])) or [{}])[-1].get("key")
                 for r in records}
    entered = {
        (v.opportunity_id, v.stage): v.entered_at
        for v in await session.scalars(select(StageVisitRecord).where(StageVisitRecord.org_id == key.org_id,
                                                                      StageVisitRecord.pipeline_name == pipeline))
    }
    deals = []
    for r in records:
        won_at = entered.get((r.id, won_stage[r.id])) if r.stage == won_stage[r.id] else None
        deals.append(ForecastDeal(
            id=r.id, created=_as_date(r.created_at), value=to_float((r.state.get("opp") or {}).get("amount")) or 0.0,
            closed=_as_date(won_at) if won_at else None, won=True if won_at else None, stage=r.stage,
        ))
    when = as_of or datetime.now(UTC).date()
    return await asyncio.to_thread(forecast, deals, when, horizon, periods, SIMULATIONS)
