"""Deal risk (0–100): the win/loss model (or the prior) plus documented MEDDPICC and event rules.

``risk = 100 × (1 − P(win))``. The log-odds of a win start from:

* **prior** (no trained deal model): the stage's probability in the default PEAK pipeline
  (prospect 10%, engage 30%, acquire 60%, keep 100% — ``rules/peak.yaml``);
* **model**: the org's history model (``ai.deals``), which describes deals from the stage its
  snapshots start in (``history_stage``, *engage* for Maven: snapshots start at ``engage_date``),
  shifted for other stages by the difference of the PEAK stage log-odds.

Then each rule below adds its log-odds (negative = riskier). A factor's effect is the risk points it
adds: the risk with every rule minus the risk without that one.

MEDDPICC scores are 0–3 (0 unknown, 1 identified, 2 confirmed, 3 strong; higher values count as 3).
A **gap** is a score below what the stage expects; each missing level costs the dimension's weight:

| dimension | prospect | engage | acquire | log-odds per missing level |
|---|---|---|---|---|
| metrics | – | 1 | 2 | −0.25 |
| economic_buyer | – | 1 | 2 | −0.35 |
| decision_criteria | – | – | 2 | −0.15 |
| decision_process | – | – | 2 | −0.20 |
| paper_process | – | – | 1 | −0.20 |
| identify_pain | 1 | 2 | 2 | −0.25 |
| champion | – | 1 | 2 | −0.35 |
| competition | – | – | 1 | −0.10 |

| event rule | when | log-odds | urgency |
|---|---|---|---|
| ``event.contract_unsigned`` | a ``contract.sent`` event ≥ 7 days old with no ``contract.signed`` after it | −0.30 | high |
| ``event.payment_failed`` | a ``payment.failed`` event with no ``payment.received`` after it | −0.50 | high |
| ``event.call_objection`` | the latest ``call.recorded`` (≤ 30 days old) carries an objection (``objections`` list, or a tracker/topic named like "objection") | −0.25 | medium |
| ``event.champion_quiet`` | the champion (contact with role *champion*) last appeared in an event, or ``champion_last_contact``, ≥ 14 days ago | −0.40 | high |
| ``event.close_date_slipped`` | the close date is past, or later than ``original_close_date`` | −0.30 / −0.20 | high / medium |
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

import yaml
from pydantic import BaseModel

from ai.deals import Deal, DealModel, activity_of, parse_date
from rules.defaults import PEAK_PIPELINE

RULES_VERSION = "risk-rules/1"
PRIOR_VERSION = "deals-prior-1"
MEDDPICC = (
    "metrics", "economic_buyer", "decision_criteria", "decision_process",
    "paper_process", "identify_pain", "champion", "competition",
)  # fmt: skip
LABELS = {
    "metrics": "Metrics", "economic_buyer": "Economic buyer", "decision_criteria": "Decision criteria",
    "decision_process": "Decision process", "paper_process": "Paper process", "identify_pain": "Identified pain",
    "champion": "Champion", "competition": "Competition",
}  # fmt: skip
STAGE_EXPECTATIONS: dict[str, dict[str, int]] = {
    "prospect": {"identify_pain": 1},
    "engage": {"identify_pain": 2, "metrics": 1, "champion": 1, "economic_buyer": 1},
    "acquire": {
        "identify_pain": 2, "metrics": 2, "champion": 2, "economic_buyer": 2,
        "decision_criteria": 2, "decision_process": 2, "paper_process": 1, "competition": 1,
    },
    "keep": {},
}  # fmt: skip
GAP_WEIGHTS = {
    "metrics": 0.25, "economic_buyer": 0.35, "decision_criteria": 0.15, "decision_process": 0.20,
    "paper_process": 0.20, "identify_pain": 0.25, "champion": 0.35, "competition": 0.10,
}  # fmt: skip
CONTRACT_SENT = ("contract.sent", "docusign.envelope-sent", "envelope.sent")
CONTRACT_UNSIGNED_DAYS = 7
CHAMPION_QUIET_DAYS = 14
OBJECTION_WINDOW_DAYS = 30
P_MIN, P_MAX = 0.01, 0.99


@lru_cache
def stage_priors() -> dict[str, float]:
    """Stage → win probability, from the default PEAK pipeline."""
    doc = yaml.safe_load(PEAK_PIPELINE.read_text())
    return {s["key"]: float(s["probability"]) for s in doc["spec"]["stages"]}


def _logit(p: float) -> float:
    p = min(max(p, P_MIN), P_MAX)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


class RiskFactor(BaseModel):
    """One reason for the risk: what, how many risk points it adds, and where it comes from."""

    code: str
    text: str
    effect: float  # risk points (positive: riskier)
    source: str  # "prior" | "model" | "rule"


@dataclass
class Signal:
    """A rule that fired: its log-odds on a win, its words and its urgency."""

    code: str
    delta: float
    text: str
    urgency: str
    detail: dict = field(default_factory=dict)


@dataclass
class Assessment:
    """The deal's risk, its factors and the rule signals next-best-action builds on."""

    risk_score: float
    win_probability: float
    factors: list[RiskFactor]
    signals: list[Signal]
    model_version: str
    source: str  # "prior" | "model"
    base_logit: float
    days_to_close: int | None
    age_factor: float = 0.0  # risk points the deal's age adds (model), for next actions

    def risk_without(self, codes: set[str]) -> float:
        """The risk if the signals named ``codes`` were resolved."""
        z = self.base_logit + sum(s.delta for s in self.signals if s.code not in codes)
        return round(100 * (1 - _sigmoid(z)), 1)


def _aware(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            day = parse_date(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _score(value: object) -> int:
    try:
        return max(0, min(3, int(float(value))))
    except (TypeError, ValueError):
        return 0


def meddpicc_gaps(opp: dict, stage: str) -> list[Signal]:
    """A signal per MEDDPICC dimension scored below the stage's expectation."""
    scores = opp.get("meddpicc") or {}
    out = []
    for dim, expected in STAGE_EXPECTATIONS.get(stage, {}).items():
        have = _score(scores.get(dim))
        if have < expected:
            out.append(Signal(
                code=f"gap.{dim}",
                delta=-GAP_WEIGHTS[dim] * (expected - have),
                text=f"{LABELS[dim]} is {have}/3; the {stage} stage expects {expected}",
                urgency="medium" if stage == "acquire" else "low",
                detail={"dimension": dim, "score": have, "expected": expected},
            ))
    return out


def _events(events: list[dict]) -> list[tuple[datetime, dict]]:
    timed = [(at, e) for e in events if isinstance(e, dict) and (at := _aware(e.get("at") or e.get("occurred_at")))]
    return sorted(timed, key=lambda t: t[0])


def _champion_email(opp: dict) -> str | None:
    contacts = [c for c in (opp.get("contacts") or []) if isinstance(c, dict)]
    if isinstance(opp.get("primary_contact"), dict):
        contacts.append(opp["primary_contact"])
    for contact in contacts:
        if "champion" in str(contact.get("role") or "").casefold() and contact.get("email"):
            return str(contact["email"]).casefold()
    return None


def _objection(data: dict) -> str | None:
    objections = data.get("objections")
    if isinstance(objections, list) and objections:
        return str(objections[0])
    if isinstance(objections, str) and objections.strip():
        return objections.strip()
    for key in ("trackers", "topics"):
        for item in data.get(key) or []:
            name = str((item or {}).get("name") or "") if isinstance(item, dict) else str(item)
            if "objection" in name.casefold() and (not isinstance(item, dict) or item.get("count", 1)):
                return name
    return None


def event_signals(opp: dict, events: list[dict], now: datetime) -> list[Signal]:
    """Signals from recent events and dates (contract, payment, call, champion, close date)."""
    timed = _events(events)
    out: list[Signal] = []

    def last(types: tuple[str, ...]) -> tuple[datetime, dict] | None:
        found = [t for t in timed if t[1].get("type") in types]
        return found[-1] if found else None

    sent = last(CONTRACT_SENT)
    if sent:
        signed_after = any(e.get("type") == "contract.signed" and at >= sent[0] for at, e in timed)
        days = (now - sent[0]).days
        if not signed_after and days >= CONTRACT_UNSIGNED_DAYS:
            out.append(Signal("event.contract_unsigned", -0.30,
                              f"The contract was sent {days} days ago and is not signed", "high", {"days": days}))
    failed = last(("payment.failed",))
    if failed and not any(e.get("type") == "payment.received" and at >= failed[0] for at, e in timed):
        out.append(Signal("event.payment_failed", -0.50,
                          f"A payment failed on {failed[0].date().isoformat()} and none was received since",
                          "high", {"at": failed[0].isoformat()}))
    call = last(("call.recorded",))
    if call and (now - call[0]).days <= OBJECTION_WINDOW_DAYS:
        objection = _objection(call[1].get("data") or {})
        if objection:
            title = (call[1].get("data") or {}).get("title") or "the last call"
            out.append(Signal("event.call_objection", -0.25,
                              f"An objection was raised on '{title}': {objection}", "medium",
                              {"objection": objection, "call": title}))
    champion = _champion_email(opp)
    if champion:
        touches = [at for at, e in timed if champion in json.dumps(e.get("data") or {}, default=str).casefold()]
        noted = _aware(opp.get("champion_last_contact"))
        if noted:
            touches.append(noted)
        last_touch = max(touches) if touches else (timed[0][0] if timed else None)
        if last_touch and (now - last_touch).days >= CHAMPION_QUIET_DAYS:
            days = (now - last_touch).days
            heard = "has not appeared in any event" if not touches else f"was last heard from {days} days ago"
            out.append(Signal("event.champion_quiet", -0.40, f"The champion ({champion}) {heard}", "high",
                              {"days": days, "email": champion}))
    close = parse_date(opp.get("close_date"))
    original = parse_date(opp.get("original_close_date"))
    if close and close < now.date():
        days = (now.date() - close).days
        out.append(Signal("event.close_date_slipped", -0.30,
                          f"The close date {close.isoformat()} passed {days} days ago", "high", {"overdue_days": days}))
    elif close and original and close > original:
        out.append(Signal("event.close_date_slipped", -0.20,
                          f"The close date moved from {original.isoformat()} to {close.isoformat()}", "medium",
                          {"from": original.isoformat(), "to": close.isoformat()}))
    return out


def deal_from_opp(opp: dict, opportunity_id: str, events: Sequence[object] | None = None) -> Deal:
    """The model's view of a hub opportunity document and the domain events its workflow recorded."""
    fields = opp.get("fields") if isinstance(opp.get("fields"), dict) else {}
    owner = opp.get("owner")
    account = opp.get("account")
    amount = opp.get("amount")
    return Deal(
        id=opportunity_id,
        stage=opp.get("stage"),
        won=None,
        product=str(opp.get("product") or fields.get("product") or "") or None,
        account=str((account.get("name") if isinstance(account, dict) else account) or "") or None,
        owner=str((owner.get("name") or owner.get("id") if isinstance(owner, dict) else owner) or "") or None,
        value=float(amount) if isinstance(amount, int | float) and amount > 0 else None,
        created=parse_date(opp.get("engaged_at") or opp.get("created_at") or opp.get("created")),
        expected_close=parse_date(opp.get("close_date")),
        activity=activity_of(events or []),
    )


def assess(opp: dict, stage: str, events: list[dict], now: datetime, model: DealModel | None,
           opportunity_id: str = "", history_stage: str = "engage") -> Assessment:
    """The deal's risk: base (prior or model) plus the rules, with every factor explained."""
    priors = stage_priors()
    stage_p = priors.get(stage, priors.get(history_stage, 0.3))
    factors: list[RiskFactor] = []
    age_factor = 0.0
    if model is None:
        base = _logit(stage_p)
        source, version = "prior", PRIOR_VERSION
        factors.append(RiskFactor(code="prior.stage", source="prior", effect=round(100 * (1 - _sigmoid(base)), 1),
                                  text=f"Deals in the {stage} stage are won {stage_p:.0%} of the time "
                                       "(PEAK prior: no deal model trained for this org yet)"))
    else:
        scored = model.score([deal_from_opp(opp, opportunity_id, events)], [now.date()])[0]
        shift = _logit(stage_p) - _logit(priors.get(history_stage, stage_p))
        base = _logit(scored.win_probability) + shift
        source, version = "model", model.version
        factors.append(RiskFactor(code="model.history", source="model",
                                  effect=round(100 * (1 - _sigmoid(base)), 1),
                                  text=f"Similar deals in this org's history were won "
                                       f"{scored.win_probability:.0%} of the time (adjusted for the {stage} stage)"))
        for f in scored.factors:
            factors.append(RiskFactor(code=f"model.{f.feature.replace(' ', '_')}", text=f.text,
                                      effect=-f.effect, source="model"))
            if f.feature == "age vs typical cycle":
                age_factor = -f.effect
    signals = [] if stage == "keep" and not opp.get("meddpicc") else meddpicc_gaps(opp, stage)
    signals += event_signals(opp, events, now)
    z = base + sum(s.delta for s in signals)
    risk = round(100 * (1 - _sigmoid(z)), 1)
    for s in signals:
        without = 100 * (1 - _sigmoid(z - s.delta))
        factors.append(RiskFactor(code=s.code, text=s.text, effect=round(risk - without, 1), source="rule"))
    close = parse_date(opp.get("close_date"))
    return Assessment(
        risk_score=risk,
        win_probability=round(_sigmoid(z), 4),
        factors=[factors[0], *sorted(factors[1:], key=lambda f: (-abs(f.effect), f.code))],
        signals=signals,
        model_version=version,
        source=source,
        base_logit=base,
        days_to_close=(close - now.date()).days if close else None,
        age_factor=age_factor,
    )

