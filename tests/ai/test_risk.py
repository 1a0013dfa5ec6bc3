"""Deal risk: the PEAK prior, the history model, and each documented MEDDPICC and event rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from ai.deals import DealMapping, deals_from_rows, train_deals
from ai.risk import assess, event_signals, meddpicc_gaps, stage_priors
from tests.ai.synthetic import deal_rows

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
FULL = {k: 3 for k in ("metrics", "economic_buyer", "decision_criteria", "decision_process", "paper_process",
                       "identify_pain", "champion", "competition")}


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def codes(signals) -> list[str]:
    return [s.code for s in signals]


def test_stage_priors_come_from_the_peak_pipeline() -> None:
    assert stage_priors() == {"prospect": 0.1, "engage": 0.3, "acquire": 0.6, "keep": 1.0}


def test_prior_risk_without_a_model() -> None:
    found = assess({"meddpicc": FULL}, "engage", [], NOW, None)
    assert found.source == "prior" and found.model_version == "deals-prior-1"
    assert found.risk_score == 70.0 and found.signals == []
    assert found.factors[0].code == "prior.stage" and "won 30% of the time" in found.factors[0].text


def test_meddpicc_gaps_follow_the_stage() -> None:
    opp = {"meddpicc": {"identify_pain": 2, "metrics": 1, "champion": 1, "economic_buyer": 0}}
    assert codes(meddpicc_gaps(opp, "prospect")) == []
    assert codes(meddpicc_gaps(opp, "engage")) == ["gap.economic_buyer"]
    acquire = meddpicc_gaps(opp, "acquire")
    assert set(codes(acquire)) == {"gap.metrics", "gap.champion", "gap.economic_buyer", "gap.decision_criteria",
                                   "gap.decision_process", "gap.paper_process", "gap.competition"}
    eb = next(s for s in acquire if s.code == "gap.economic_buyer")
    assert eb.delta == pytest.approx(-0.70) and eb.text == "Economic buyer is 0/3; the acquire stage expects 2"
    assert codes(meddpicc_gaps({"meddpicc": {"identify_pain": "7"}}, "prospect")) == []


def test_contract_sent_and_unsigned_for_seven_days() -> None:
    assert codes(event_signals({}, [{"type": "contract.sent", "at": ago(6)}], NOW)) == []
    assert codes(event_signals({}, [{"type": "contract.sent", "at": ago(8)}], NOW)) == ["event.contract_unsigned"]
    signed = [{"type": "contract.sent", "at": ago(9)}, {"type": "contract.signed", "at": ago(2)}]
    assert codes(event_signals({}, signed, NOW)) == []


def test_payment_failed_until_a_payment_is_received() -> None:
    failed = [{"type": "payment.failed", "at": ago(3)}]
    assert codes(event_signals({}, failed, NOW)) == ["event.payment_failed"]
    assert codes(event_signals({}, [*failed, {"type": "payment.received", "at": ago(1)}], NOW)) == []
    again = [{"type": "payment.received", "at": ago(5)}, *failed]
    assert codes(event_signals({}, again, NOW)) == ["event.payment_failed"]


def test_call_recorded_with_an_objection() -> None:
    tracker = {"type": "call.recorded", "at": ago(2),
               "data": {"title": "Pricing", "trackers": [{"name": "Pricing objection", "count": 2}]}}
    listed = {"type": "call.recorded", "at": ago(2), "data": {"objections": ["budget frozen"]}}
    clean = {"type": "call.recorded", "at": ago(2), "data": {"trackers": [{"name": "Competitors", "count": 1}]}}
    found = event_signals({}, [tracker], NOW)
    assert codes(found) == ["event.call_objection"]
    assert found[0].text == "An objection was raised on 'Pricing': Pricing objection"
    assert codes(event_signals({}, [listed], NOW)) == ["event.call_objection"]
    assert codes(event_signals({}, [clean], NOW)) == []
    assert codes(event_signals({}, [{**listed, "at": ago(40)}], NOW)) == []


def test_champion_gone_quiet() -> None:
    opp = {"contacts": [{"email": "Champ@Example.com", "role": "Champion"}]}
    heard = {"type": "call.recorded", "at": ago(20), "data": {"participants": [{"email": "champ@example.com"}]}}
    other = {"type": "call.recorded", "at": ago(1), "data": {"participants": [{"email": "someone@example.com"}]}}
    found = event_signals(opp, [heard, other], NOW)
    assert codes(found) == ["event.champion_quiet"]
    assert found[0].text == "The champion (champ@example.com) was last heard from 20 days ago"
    assert codes(event_signals(opp, [{**heard, "at": ago(3)}, other], NOW)) == []
    assert codes(event_signals({**opp, "champion_last_contact": ago(2)}, [heard], NOW)) == []
    assert codes(event_signals({}, [heard], NOW)) == []


def test_close_date_slipped() -> None:
    past = event_signals({"close_date": "2026-04-20"}, [], NOW)
    assert codes(past) == ["event.close_date_slipped"] and past[0].urgency == "high"
    moved = event_signals({"close_date": "2026-06-30", "original_close_date": "2026-05-31"}, [], NOW)
    assert codes(moved) == ["event.close_date_slipped"] and moved[0].delta == pytest.approx(-0.2)
    assert codes(event_signals({"close_date": "2026-06-30"}, [], NOW)) == []


def test_every_rule_adds_risk_and_is_explained() -> None:
    healthy = assess({"meddpicc": FULL, "close_date": "2026-06-30"}, "acquire", [], NOW, None)
    sick = assess({"meddpicc": {}, "close_date": "2026-04-01"}, "acquire",
                  [{"type": "payment.failed", "at": ago(1)}], NOW, None)
    assert healthy.risk_score == 40.0 and sick.risk_score > 90
    rules = [f for f in sick.factors if f.source == "rule"]
    assert len(rules) == len(sick.signals) == 10 and all(f.effect > 0 for f in rules)
    assert sick.days_to_close == -30
    assert sick.risk_without({s.code for s in sick.signals}) == healthy.risk_score


def test_the_history_model_is_shifted_by_stage() -> None:
    model = train_deals(deals_from_rows(deal_rows(600, signal=True), DealMapping(price_list={"GTX Pro": 4821})))
    opp = {"product": "GTXPro", "owner": {"name": "Ann"}, "account": {"name": "Acme"}, "amount": 4821,
           "created_at": "2026-04-01", "meddpicc": FULL}
    engage = assess(opp, "engage", [], NOW, model, "o1")
    acquire = assess(opp, "acquire", [], NOW, model, "o1")
    prospect = assess(opp, "prospect", [], NOW, model, "o1")
    assert engage.source == "model" and engage.model_version == model.version
    assert acquire.risk_score < engage.risk_score < prospect.risk_score
    assert engage.factors[0].code == "model.history"
    assert any(f.code == "model.product" and f.effect < 0 for f in engage.factors)


def test_dates_and_naive_times_are_read() -> None:
    naive = {"type": "contract.sent", "at": (NOW - timedelta(days=10)).replace(tzinfo=None).isoformat()}
    assert codes(event_signals({}, [naive, {"type": "contract.sent"}], NOW)) == ["event.contract_unsigned"]
    assert codes(event_signals({"close_date": date(2026, 4, 1)}, [], NOW)) == ["event.close_date_slipped"]
