"""``GET /v1/forecast``: expected won revenue per month or quarter with an 80% interval and scenarios.

Learned from the org's opportunities on the pipeline (``ai.forecast``), read as the deal model reads them
(``activities.ai_retraining.opportunity_outcomes``): created when the hub first saw it, valued at ``opp.amount``,
**won** from the day it entered the pipeline's last stage (PEAK: Keep), **lost** when the CRM's body says
``status: lost``; every other one is open. Open deals are simulated with the time to
close, stage conversion and calendar pattern of the closed ones; deals not yet created come in at the recent rate.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from activities.ai_retraining import opportunity_outcomes
from ai.forecast import Forecast, ForecastDeal, Horizon, forecast
from hub.deps import ReaderKey, SessionDep
from hub.problems import Problem

router = APIRouter(prefix="/v1/forecast", tags=["ai"])
SIMULATIONS = 1000


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
    outcomes = await opportunity_outcomes(session, key.org_id, pipeline)
    if not outcomes:
        raise Problem(404, f"no opportunities on pipeline {pipeline!r}")
    deals = [ForecastDeal(id=o.record.id, created=o.created, value=o.value, closed=o.closed, won=o.won,
                          stage=o.record.stage) for o in outcomes]
    when = as_of or datetime.now(UTC).date()
    return await asyncio.to_thread(forecast, deals, when, horizon, periods, SIMULATIONS)
