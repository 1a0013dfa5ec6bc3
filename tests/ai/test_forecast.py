"""Revenue forecast: periods, scenarios and intervals; the monthly backtest on the Maven history."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest

from ai.forecast import ForecastDeal, backtest, forecast, maven_deals, period_bounds
from ai.tabular import read_csv
from tests.conftest import shared_data


def test_periods_are_calendar_months_or_quarters() -> None:
    assert period_bounds(date(2017, 11, 14), "month", 3) == [
        (date(2017, 11, 1), date(2017, 11, 30)), (date(2017, 12, 1), date(2017, 12, 31)),
        (date(2018, 1, 1), date(2018, 1, 31))]
    assert period_bounds(date(2017, 8, 2), "quarter", 2) == [
        (date(2017, 7, 1), date(2017, 9, 30)), (date(2017, 10, 1), date(2018, 12, 31).replace(year=2017))]


def steady_history(seed: int = 3) -> list[ForecastDeal]:
    """Ten deals a week for a year: each closes after 2–8 weeks, 60% won, worth 1,000."""
    rng = random.Random(seed)
    deals = []
    start = date(2016, 1, 4)
    for i in range(520):
        created = start + timedelta(days=i * 7 // 10)
        closed = created + timedelta(days=rng.randint(14, 56))
        deals.append(ForecastDeal(id=f"d{i}", created=created, closed=closed, won=rng.random() < 0.6, value=1000.0))
    return deals


def test_a_steady_history_forecasts_its_own_rate() -> None:
    deals = steady_history()
    as_of = date(2016, 10, 1)
    steady = 10 * 31 / 7 * 0.6 * 1000  # closings per month match creations once the pipeline is steady
    result = forecast(deals, as_of, "month", 2, simulations=400)
    first = result.periods[0]
    assert result.open_deals > 0 and 0.5 < result.win_rate < 0.7
    assert first.low <= first.expected <= first.high and first.commit == first.low and first.best_case == first.high
    assert first.pipeline >= first.from_open_deals
    assert abs(first.expected - steady) / steady < 0.2 and first.low < steady < first.high
    assert first.expected == pytest.approx(first.from_open_deals + first.from_new_deals, rel=1e-6)
    assert result.periods[1].from_new_deals > first.from_new_deals  # later months rest more on deals not yet made


def test_stage_win_rates_scale_open_deals() -> None:
    rng = random.Random(5)
    deals = [ForecastDeal(id=d.id, created=d.created, closed=d.closed, value=d.value, stage=stage,
                          won=rng.random() < (0.9 if stage == "late" else 0.2))
             for i, d in enumerate(steady_history()) for stage in [("late", "early")[i % 2]]]
    as_of = date(2016, 10, 1)
    still_open = {d.id: d.stage for d in deals if d.created < as_of <= d.closed}
    only = {stage: forecast([d for d in deals if still_open.get(d.id, stage) == stage], as_of, "month", 1,
                            simulations=300).periods[0] for stage in ("late", "early")}
    assert only["late"].from_open_deals > 2 * only["early"].from_open_deals


def test_maven_monthly_backtest_beats_both_naive_baselines() -> None:
    """Each month May–Dec 2017 forecast from what was known at its start (the README has the table)."""
    base = shared_data("maven_crm_sales_opportunities")
    prices = {r["product"]: float(r["sales_price"]) for r in read_csv(base / "products.csv")}
    deals, actual = maven_deals(read_csv(base / "sales_pipeline.csv"), prices)
    result = backtest(deals, actual, date(2017, 5, 1), date(2017, 12, 1), simulations=300)
    assert len(result.months) == 8
    assert result.mape < result.mape_last_month and result.mape < result.mape_weighted_pipeline
    assert 0.7 <= result.coverage <= 0.9
