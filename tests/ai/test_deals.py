"""Deal model: Maven quirks, snapshots, honest shrinkage toward the base rate, time-ordered holdout."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from ai.deals import (
    DealMapping,
    closed_deals,
    deals_from_rows,
    product_key,
    read_deals,
    snapshot,
    train_deals,
)
from ai.evaluate import evaluate_deals
from ai.tabular import DataError
from tests.ai.synthetic import DEAL_HEADER, PRODUCTS_CSV, deal_rows, to_csv
from tests.conftest import shared_data


def test_product_names_match_across_files(tmp_path) -> None:
    assert product_key("GTXPro") == product_key("GTX Pro") == "gtxpro"
    (tmp_path / "products.csv").write_bytes(PRODUCTS_CSV)
    (tmp_path / "sales_pipeline.csv").write_bytes(to_csv(deal_rows(30), DEAL_HEADER, trailing_comma=False))
    deals, mapping = read_deals(tmp_path / "sales_pipeline.csv")
    assert mapping.price_list == {"GTX Basic": 550.0, "GTX Pro": 4821.0, "MG Special": 55.0}
    pro = [d for d in deals if d.product == "GTXPro"]
    assert pro and all(d.value == 4821.0 for d in pro)
    assert {d.stage for d in deals if d.won is None} == {"Engaging"}


def test_close_value_is_never_the_value() -> None:
    """Maven's close_value is 0 for every lost deal: by default the value is the list price, not it."""
    deals = deals_from_rows(deal_rows(100), DealMapping(price_list={"GTX Pro": 4821}))
    lost = [d for d in deals if d.won == 0]
    assert lost and {d.value for d in lost if d.product == "GTXPro"} == {4821.0}
    assert {d.value for d in lost if d.product != "GTXPro"} == {None}


def test_snapshots_see_a_deal_only_while_it_is_open() -> None:
    deals = closed_deals(deals_from_rows(deal_rows(60), DealMapping()))
    snaps = snapshot(deals, typical=30.0)
    for i, deal in enumerate(deals):
        ages = snaps.ages[snaps.deal == i]
        assert ages[0] == 0 and all(a < deal.duration for a in ages[1:])
    scoring = snapshot(deals[:2], 30.0, as_of=[deals[0].created.replace(day=28), deals[1].created])
    assert scoring.y is None and scoring.nums[1, 1] == 0


def test_a_real_signal_is_learned_and_beats_the_base_rate_later() -> None:
    deals = deals_from_rows(deal_rows(900, signal=True), DealMapping())
    model = train_deals(deals)
    assert model.shrink > 0
    ev = evaluate_deals(deals)
    assert ev.snapshots.brier < ev.snapshots.base_rate_brier and ev.snapshots.auc > 0.7
    open_deal = next(d for d in deals if d.won is None and d.product == "MG Special")
    scored = model.score([open_deal], [date(2017, 12, 31)])[0]
    assert scored.win_probability < model.base_rate
    assert scored.factors[0].feature == "product"
    assert scored.factors[0].text.startswith("product is MG Special: lowers the win probability by")


def test_no_signal_means_the_base_rate() -> None:
    deals = deals_from_rows(deal_rows(900, signal=False, seed=3), DealMapping())
    model = train_deals(deals)
    assert model.shrink == 0.0
    snaps = snapshot(closed_deals(deals), model.typical)
    assert np.allclose(model.probabilities(snaps), model.base_rate)
    assert all(not s.factors for s in model.score(deals[:20], [date(2017, 12, 31)] * 20))
    ev = evaluate_deals(deals)
    assert ev.snapshots.brier == ev.snapshots.base_rate_brier


def test_too_little_history_is_refused() -> None:
    with pytest.raises(DataError, match="at least 50 closed deals"):
        train_deals(deals_from_rows(deal_rows(40), DealMapping()))


def test_maven_time_ordered_holdout_is_not_worse_than_the_base_rate() -> None:
    deals, mapping = read_deals(shared_data("maven_crm_sales_opportunities", "sales_pipeline.csv"))
    assert len(deals) == 8800
    assert sum(d.won is None for d in deals) == 2089
    assert mapping.price_list["GTX Pro"] == 4821 and all(d.value for d in deals if d.product == "GTXPro")
    ev = evaluate_deals(deals, mapping)
    assert ev.test_closed_from >= ev.train_closed_until
    assert ev.snapshots.brier <= ev.snapshots.base_rate_brier
    assert ev.at_engagement.brier <= ev.at_engagement.base_rate_brier
