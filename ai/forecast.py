"""Revenue forecast: expected won revenue per period with an 80% interval and scenarios.

The model, learned from the deals known at the forecast date ``as_of`` (closed ones and those still open,
which count as censored — a deal open 90 days says something about cycles of 90 days):

* **Time to close** — per week of age, the share of the deals still open at that age that closed that week
  (a discrete hazard, censoring respected), and the share of those that were won; sparse weeks borrow from the
  pooled rate. A **calendar factor** per month-in-quarter (closings bunch at quarter ends) scales the hazard:
  the closings observed in months of that position over those the hazard alone predicts.
* **Stage** — when deals carry stages, each open deal's chance of winning is scaled by its stage's historical
  win rate over the overall rate (stage conversion; a stage needs ``MIN_STAGE_DEALS`` closed deals).
* **Deals not yet created** — a seasonal baseline: the weekly creation rate of the last ``RECENT_WEEKS`` weeks
  (values drawn from those deals), sent through the same hazard from age 0.

Monte Carlo (``simulations`` runs) over every open deal and the new ones gives each period's distribution of
won revenue: ``expected`` (mean), the 80% interval (10th–90th percentile), and the scenarios **commit** (the
10th percentile: reached 9 times out of 10), **best case** (the 90th percentile) and **pipeline** (the value of
every open deal that could close in the period, unweighted, plus the expected new-deal revenue).
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats

WEEK = 7
MAX_WEEKS = 52  # ages past a year share the last week's rates
HALF_LIFE_DAYS = 60  # recent closings weigh more: the pipeline's pace changes
MIN_AT_RISK = 10  # a week with fewer open deals borrows its rates from the pooled ones
WIN_PRIOR = 20  # pseudo-deals of the pooled win rate in each week's win share
MIN_STAGE_DEALS = 30
RECENT_WEEKS = 8
AGE_GROUPS = ((0, 1), (2, 3), (4, 7), (8, 12), (13, MAX_WEEKS))  # weeks of age, for the calendar interaction
GROUP_OF = np.array([next(i for i, (a, b) in enumerate(AGE_GROUPS) if a <= w <= b) for w in range(MAX_WEEKS + 1)])
DEFAULT_SIGMA = 0.3  # month-to-month swing of the closing rate until three months are observed
MIN_SIGMA = 0.05
Horizon = Literal["month", "quarter"]


@dataclass(frozen=True)
class ForecastDeal:
    """A deal as the forecast sees it: created, closed (None while open), won, value, stage."""

    id: str
    created: date
    value: float
    closed: date | None = None
    won: bool | None = None
    stage: str | None = None


class Period(BaseModel):
    """One period's forecast of won revenue."""

    start: date
    end: date  # inclusive
    expected: float
    low: float  # 80% interval
    high: float
    commit: float
    best_case: float
    pipeline: float
    from_open_deals: float  # expected revenue from deals open at the forecast date
    from_new_deals: float  # expected revenue from deals not yet created


class Forecast(BaseModel):
    """Forecast periods and what they were learned from."""

    as_of: date
    horizon: str
    open_deals: int
    history_deals: int
    win_rate: float
    periods: list[Period]


def _recency(day: date, as_of: date) -> float:
    """The weight of what happened on ``day``: halved every ``HALF_LIFE_DAYS`` before ``as_of``."""
    return 0.5 ** ((as_of - day).days / HALF_LIFE_DAYS)


def _group(week: int) -> int:
    return int(GROUP_OF[min(week, MAX_WEEKS)])


def _position(day: date) -> int:
    """The month's place in its quarter: 0, 1 or 2."""
    return (day.month - 1) % 3


def period_bounds(as_of: date, horizon: Horizon, periods: int) -> list[tuple[date, date]]:
    """Consecutive calendar months or quarters, the first one containing ``as_of``."""
    step = 1 if horizon == "month" else 3
    month = as_of.month if horizon == "month" else 3 * ((as_of.month - 1) // 3) + 1
    year = as_of.year
    out = []
    for _ in range(periods):
        end_month, end_year = month + step - 1, year
        while end_month > 12:
            end_month, end_year = end_month - 12, end_year + 1
        out.append((date(year, month, 1), date(end_year, end_month, calendar.monthrange(end_year, end_month)[1])))
        month, year = end_month + 1, end_year
        if month > 12:
            month, year = 1, year + 1
    return out


class _Rates:
    """Weekly close hazard and win share by age, their calendar interaction, stage factors, from ``as_of``."""

    def __init__(self, deals: Sequence[ForecastDeal], as_of: date, swing: bool = True) -> None:
        known = [d for d in deals if d.created < as_of]
        closed = [d for d in known if d.closed is not None and d.closed < as_of]
        # Exposure counts from the first recorded closing: before it, the history cannot show a deal closing.
        self.observed_from = min((d.closed for d in closed), default=as_of)
        at_risk, closes, wins = np.zeros(MAX_WEEKS + 1), np.zeros(MAX_WEEKS + 1), np.zeros(MAX_WEEKS + 1)
        cell_risk, cell_closes = np.zeros((len(AGE_GROUPS), 3)), np.zeros((len(AGE_GROUPS), 3))
        weeks_seen: list[tuple[tuple[int, int], int]] = []  # (year, month), age in weeks
        for d in known:
            ended = d.closed if d.closed is not None and d.closed < as_of else None
            weeks = min(((ended or as_of) - d.created).days // WEEK, MAX_WEEKS)
            seen_from = min(max(0, -(-(self.observed_from - d.created).days // WEEK)), weeks)
            for week in range(seen_from, weeks + (1 if ended else 0)):
                middle = d.created + timedelta(days=week * WEEK + WEEK // 2)
                weight = _recency(middle, as_of)
                at_risk[week] += weight
                cell_risk[_group(week), _position(middle)] += weight
                weeks_seen.append(((middle.year, middle.month), week))
            if ended:
                weight = _recency(ended, as_of)
                closes[weeks] += weight
                wins[weeks] += weight * bool(d.won)
                cell_closes[_group(weeks), _position(ended)] += weight
        self.win_rate = float(wins.sum() / closes.sum()) if closes.sum() else 0.5
        pooled = float(closes.sum() / at_risk.sum()) if at_risk.sum() else 0.0
        self.hazard = np.where(at_risk >= MIN_AT_RISK, closes / np.maximum(at_risk, 1), pooled)
        self.win = (wins + WIN_PRIOR * self.win_rate) / (closes + WIN_PRIOR)
        group_rate = cell_closes.sum(axis=1) / np.maximum(cell_risk.sum(axis=1), 1)
        cell_rate = np.where(cell_risk >= MIN_AT_RISK, cell_closes / np.maximum(cell_risk, 1), group_rate[:, None])
        self.calendar = np.where(group_rate[:, None] > 0, cell_rate / np.maximum(group_rate[:, None], 1e-9), 1.0)
        self.sigma = _swing(deals, self.observed_from, as_of) if swing else DEFAULT_SIGMA
        self.stage = self._stages(closed)
        self.history = len(closed)

    def close_probability(self, age: np.ndarray, day: date) -> np.ndarray:
        """P(a deal open at ``age`` weeks closes in the week around ``day``)."""
        return self.hazard[age] * self.calendar[GROUP_OF[age], _position(day)]

    def _stages(self, closed: Sequence[ForecastDeal]) -> dict[str, float]:
        by_stage: dict[str, list[bool]] = {}
        for d in closed:
            if d.stage:
                by_stage.setdefault(d.stage, []).append(bool(d.won))
        return {s: float(np.mean(w)) / self.win_rate for s, w in by_stage.items()
                if len(w) >= MIN_STAGE_DEALS and self.win_rate > 0}


def expected_closings(deals: Sequence[ForecastDeal], rates: _Rates, start: date, end: date) -> float:
    """Expected closings in [start, end) of the deals open at ``start`` and of those created meanwhile at the
    recent rate (no simulation: each deal's chance to close is one minus its chance to stay open)."""
    open_deals = [d for d in deals if d.created < start and (d.closed is None or d.closed >= start)]
    weeks = max(1, (end - start).days // WEEK)
    ages = np.array([(start - d.created).days // WEEK for d in open_deals], dtype=np.int64)
    stay = np.ones(len(ages))
    new_per_week = sum(1 for d in deals if start - timedelta(weeks=RECENT_WEEKS) <= d.created < start) / RECENT_WEEKS
    new_stay = np.ones(weeks)  # one cohort per creation week
    for week in range(weeks):
        day = start + timedelta(days=week * WEEK + WEEK // 2)
        stay *= 1 - np.clip(rates.close_probability(np.minimum(ages + week, MAX_WEEKS), day), 0, 1)
        cohort_ages = np.maximum(week - np.arange(weeks), 0)
        active = np.arange(weeks) <= week
        new_stay[active] *= 1 - np.clip(rates.close_probability(cohort_ages[active], day), 0, 1)
    return float((1 - stay).sum() + new_per_week * (1 - new_stay).sum())


def _swing(deals: Sequence[ForecastDeal], observed_from: date, as_of: date) -> float:
    """The month-to-month swing the model misses: the spread (log) of each past month's closings over those
    expected from what was known at its start (rates learned then), from the third observed month on."""
    month = observed_from.replace(day=1)
    residuals = []
    for _ in range(2):
        month = period_bounds(month, "month", 2)[1][0]
    while (end := period_bounds(month, "month", 2)[1][0]) <= as_of:
        expected = expected_closings(deals, _Rates(deals, month, swing=False), month, end)
        observed = sum(1 for d in deals if d.closed is not None and month <= d.closed < end)
        residuals.append(math.log((observed + 5) / (expected + 5)))
        month = end
    if len(residuals) < 2:
        return DEFAULT_SIGMA
    rms = float(np.sqrt(np.mean(np.square(residuals))))  # around zero: a bias widens it too
    # Few months measure the swing loosely: widen as a Student t with that many degrees of freedom would.
    return max(rms * float(stats.t.ppf(0.9, len(residuals)) / stats.norm.ppf(0.9)), MIN_SIGMA)


def _simulate(ages: np.ndarray, win_scale: np.ndarray, start: date, days: int, rates: _Rates,
              rng: np.random.Generator, shocks: np.ndarray, first_month: int) -> tuple[np.ndarray, np.ndarray]:
    """(close day offset from ``start`` or -1, won) per simulation × deal over ``days``; ``shocks`` (simulations ×
    months from ``first_month``, a year-month index) scale each simulation's closing rate month by month."""
    sims, n = shocks.shape[0], len(ages)
    close_day = np.full((sims, n), -1, dtype=np.int64)
    won = np.zeros((sims, n), dtype=bool)
    open_ = np.ones((sims, n), dtype=bool)
    for week in range(0, days // WEEK + 1):
        day = start + timedelta(days=week * WEEK + WEEK // 2)
        age = np.minimum(ages + week, MAX_WEEKS)
        shock = shocks[:, min(day.year * 12 + day.month - first_month, shocks.shape[1] - 1)][:, None]
        p_close = np.clip(rates.close_probability(age, day) * shock, 0, 1)
        closes = open_ & (rng.random((sims, n)) < p_close)
        wins = rng.random((sims, n)) < np.clip(rates.win[age] * win_scale, 0, 1)
        close_day[closes] = week * WEEK + rng.integers(0, WEEK, size=int(closes.sum()))
        won |= closes & wins
        open_ &= ~closes
    inside = (close_day >= 0) & (close_day < days)
    return np.where(inside, close_day, -1), won & inside


def forecast(deals: Sequence[ForecastDeal], as_of: date, horizon: Horizon = "month", periods: int = 3,
             simulations: int = 1000, seed: int = 0) -> Forecast:
    """Won revenue per period from ``as_of`` (the first period's part before ``as_of`` is not forecast)."""
    rng = np.random.default_rng(seed)
    rates = _Rates(deals, as_of)
    bounds = period_bounds(as_of, horizon, periods)
    days = (bounds[-1][1] - as_of).days + 1
    open_deals = [d for d in deals if d.created < as_of and (d.closed is None or d.closed >= as_of)]
    ages = np.array([(as_of - d.created).days // WEEK for d in open_deals], dtype=np.int64)
    values = np.array([d.value for d in open_deals], dtype=float)
    scale = np.array([rates.stage.get(d.stage or "", 1.0) for d in open_deals])
    first_month = as_of.year * 12 + as_of.month
    months = bounds[-1][1].year * 12 + bounds[-1][1].month - first_month + 1
    shocks = np.exp(rng.normal(-rates.sigma**2 / 2, rates.sigma, size=(simulations, months)))  # mean 1
    close_day, won = _simulate(ages, scale, as_of, days, rates, rng, shocks, first_month)
    revenue_open = _per_period(close_day, won, values, as_of, bounds)
    revenue_new = _new_deals(deals, as_of, days, bounds, rates, rng, shocks, first_month)
    total = revenue_open + revenue_new
    may_close = close_day >= 0
    out = []
    for j, (start, end) in enumerate(bounds):
        first, last = (max(start, as_of) - as_of).days, (end - as_of).days
        could = (may_close & (close_day >= first) & (close_day <= last)).mean(axis=0) >= 0.05
        low, high = np.percentile(total[:, j], [10, 90])
        out.append(Period(
            start=start, end=end, expected=_money(total[:, j].mean()), low=_money(low), high=_money(high),
            commit=_money(low), best_case=_money(high),
            pipeline=_money(values[could].sum() + revenue_new[:, j].mean()),
            from_open_deals=_money(revenue_open[:, j].mean()), from_new_deals=_money(revenue_new[:, j].mean()),
        ))
    return Forecast(as_of=as_of, horizon=horizon, open_deals=len(open_deals), history_deals=rates.history,
                    win_rate=round(rates.win_rate, 4), periods=out)


def _per_period(close_day: np.ndarray, won: np.ndarray, values: np.ndarray, as_of: date,
                bounds: list[tuple[date, date]]) -> np.ndarray:
    out = np.zeros((close_day.shape[0], len(bounds)))
    for j, (start, end) in enumerate(bounds):
        first, last = (max(start, as_of) - as_of).days, (end - as_of).days
        hit = won & (close_day >= first) & (close_day <= last)
        out[:, j] = hit.astype(float) @ values
    return out


def _new_deals(deals: Sequence[ForecastDeal], as_of: date, days: int, bounds: list[tuple[date, date]],
               rates: _Rates, rng: np.random.Generator, shocks: np.ndarray, first_month: int) -> np.ndarray:
    """Won revenue per simulation × period from deals created from ``as_of`` on, at the recent creation rate."""
    since = as_of - timedelta(weeks=RECENT_WEEKS)
    recent = np.array([d.value for d in deals if since <= d.created < as_of], dtype=float)
    sims = shocks.shape[0]
    out = np.zeros((sims, len(bounds)))
    if recent.size == 0:
        return out
    per_week = recent.size / RECENT_WEEKS
    for week in range(days // WEEK + 1):
        count = int(rng.poisson(per_week * sims))  # this week's new deals across all simulations
        if count == 0:
            continue
        sim = rng.integers(0, sims, size=count)
        values = rng.choice(recent, size=count)
        start = as_of + timedelta(days=week * WEEK)
        close_day, won = _simulate(np.zeros(1, dtype=np.int64), np.ones(1), start, days - week * WEEK, rates, rng,
                                   shocks[sim], first_month)
        close_day, won = close_day[:, 0] + week * WEEK, won[:, 0]
        for j, (p_start, p_end) in enumerate(bounds):
            first, last = (max(p_start, as_of) - as_of).days, (p_end - as_of).days
            hit = won & (close_day >= first) & (close_day <= last)
            np.add.at(out[:, j], sim[hit], values[hit])
    return out


def _money(x: float) -> float:
    return round(float(x), 2)


class BacktestMonth(BaseModel):
    """One backtested month: the forecast made at its start, the two naive baselines, what was won."""

    month: str
    actual: float
    expected: float
    low: float
    high: float
    last_month: float
    weighted_pipeline: float


class Backtest(BaseModel):
    """Monthly backtest: MAPE of the forecast and of each naive baseline, and the 80% interval's coverage."""

    months: list[BacktestMonth]
    mape: float
    mape_last_month: float
    mape_weighted_pipeline: float
    coverage: float


def backtest(deals: Sequence[ForecastDeal], actual_value: dict[str, float], first: date, last: date,
             simulations: int = 1000, seed: int = 0) -> Backtest:
    """Forecast each month from ``first`` to ``last`` (month starts) from what was known at its start, against
    the revenue then won (``actual_value``: deal id → realised value of won deals). Baselines: last month's won
    revenue; every open deal's value × the win rate of the deals closed so far (a stage-weighted pipeline)."""
    months = []
    start = first
    while start <= last:
        end = period_bounds(start, "month", 1)[0][1]
        prev = (start - timedelta(days=1)).replace(day=1)

        def won_in(a: date, b: date) -> float:
            return sum(actual_value.get(d.id, d.value) for d in deals
                       if d.won and d.closed is not None and a <= d.closed <= b)

        result = forecast(deals, start, "month", 1, simulations, seed).periods[0]
        closed = [d for d in deals if d.closed is not None and d.closed < start]
        rate = float(np.mean([bool(d.won) for d in closed])) if closed else 0.5
        pipeline = sum(d.value for d in deals if d.created < start and (d.closed is None or d.closed >= start))
        months.append(BacktestMonth(
            month=start.strftime("%Y-%m"), actual=_money(won_in(start, end)), expected=result.expected,
            low=result.low, high=result.high, last_month=_money(won_in(prev, start - timedelta(days=1))),
            weighted_pipeline=_money(rate * pipeline),
        ))
        start = end + timedelta(days=1)

    def mape(name: str) -> float:  # over the months that won anything
        return round(float(np.mean([abs(getattr(m, name) - m.actual) / m.actual for m in months if m.actual]
                                   or [math.nan])), 4)

    return Backtest(months=months, mape=mape("expected"), mape_last_month=mape("last_month"),
                    mape_weighted_pipeline=mape("weighted_pipeline"),
                    coverage=round(float(np.mean([m.low <= m.actual <= m.high for m in months])), 3))


def maven_deals(rows: Sequence[dict], prices: dict[str, float]) -> tuple[list[ForecastDeal], dict[str, float]]:
    """Maven ``sales_pipeline.csv`` rows as forecast deals (value: the product's list price, known while open)
    and the realised ``close_value`` of each won deal."""
    from ai.deals import parse_date, product_key  # the deal model's readers of the same file

    keyed = {product_key(k): v for k, v in prices.items()}
    deals, actual = [], {}
    for row in rows:
        created = parse_date(row.get("engage_date"))
        if created is None:
            continue  # prospecting, never engaged: not yet in the pipeline
        stage = row.get("deal_stage")
        deals.append(ForecastDeal(id=row["opportunity_id"], created=created, closed=parse_date(row.get("close_date")),
                                  won={"Won": True, "Lost": False}.get(stage or ""),
                                  value=keyed.get(product_key(row.get("product") or ""), 0.0)))
        if stage == "Won":
            actual[row["opportunity_id"]] = float(row.get("close_value") or 0)
    return deals, actual


def backtest_report(bt: Backtest) -> str:
    """The backtest as text."""
    lines = ["forecast backtest (Maven, monthly, each month forecast from what was known at its start)",
             "  month      actual     forecast   80% interval              last month   weighted pipeline"]
    for m in bt.months:
        lines.append(f"  {m.month}  {m.actual:>10,.0f} {m.expected:>12,.0f}   {m.low:>10,.0f}-{m.high:<12,.0f}"
                     f" {m.last_month:>11,.0f} {m.weighted_pipeline:>18,.0f}")
    lines.append(f"  MAPE forecast {bt.mape:.1%}   last month {bt.mape_last_month:.1%}   weighted pipeline "
                 f"{bt.mape_weighted_pipeline:.1%}   80% interval coverage {bt.coverage:.0%} of months")
    return "\n".join(lines)
