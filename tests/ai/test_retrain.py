"""Champion / challenger: promoted only when better than the current model and the base rate on the newest window."""

from __future__ import annotations

import random
from datetime import date, timedelta

from ai.deals import Deal, read_deals, train_deals
from ai.retrain import challenge_deals, challenge_leads
from tests.ai.synthetic import lead_rows
from tests.conftest import shared_data


def deals_with_signal(n: int = 600, seed: int = 2) -> list[Deal]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        product = rng.choice(["Alpha", "Beta"])
        created = date(2024, 1, 1) + timedelta(days=i // 2)
        won = int(rng.random() < (0.8 if product == "Alpha" else 0.2))
        out.append(Deal(id=f"d{i}", stage=None, won=won, product=product, account=None, owner=None, value=1000.0,
                        created=created, closed=created + timedelta(days=rng.randint(10, 60))))
    return out


def test_a_challenger_with_signal_is_promoted_over_no_model_and_a_weaker_one() -> None:
    deals = deals_with_signal()
    model, first = challenge_deals(deals, None)
    assert first.promoted and first.champion_brier is None
    assert first.challenger_brier < first.base_rate_brier and first.window_rows > 0
    assert first.window_from <= first.window_until and model.metrics["deals"] == 600
    assert first.challenger_auc is not None and first.challenger_auc > 0.75 and first.champion_auc is None
    weak = train_deals([Deal(**{**d.__dict__, "product": "same"}) for d in deals])  # knows no product
    _, second = challenge_deals(deals, weak)
    assert second.promoted and second.challenger_brier < second.champion_brier
    assert second.champion_auc is not None and second.champion_auc < second.challenger_auc


def test_the_maven_history_never_promotes_a_model_worse_than_the_base_rate() -> None:
    """Maven's closed deals carry no win/loss signal: the challenger may stay at the base rate, never below it."""
    deals, mapping = read_deals(shared_data("maven_crm_sales_opportunities", "sales_pipeline.csv"))
    _, decision = challenge_deals(deals, None, mapping)
    assert decision.window_rows > 1000
    assert not decision.promoted or decision.challenger_brier < decision.base_rate_brier
    assert decision.challenger_brier >= decision.base_rate_brier - 1e-3  # no real signal to find


def test_leads_are_challenged_in_time_order() -> None:
    rows = lead_rows(400, seed=3)
    times = [(date(2025, 1, 1) + timedelta(days=i)).isoformat() for i in range(len(rows))]
    model, decision = challenge_leads(rows, None, times)
    assert decision.promoted and decision.window_from == times[320] and decision.window_until == times[-1]
    assert decision.train_rows == 320 and model.metrics["rows"] == 400
    _, again = challenge_leads(rows, model, times)  # the champion saw the window: the challenger must beat that
    assert not again.promoted and again.reason == "not better than the current model on the newest window"
