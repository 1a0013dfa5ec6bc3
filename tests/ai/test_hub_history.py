"""The deal model learns from the hub's own history: outcomes from the opportunity projections (won: entered the
last stage; lost: closed lost through the hub), the integration signals its workflows recorded as features."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import httpx
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.ai_retraining import AiRetraining, as_deal, opportunity_outcomes
from activities.ai_types import RetrainInput
from activities.opportunities import OpportunityActivities
from activities.opportunity_types import OpportunityState, PinnedPipeline, ProjectInput, StageVisit
from ai import artifacts, service
from ai.deals import SIGNALS, Deal, DealModel, train_deals
from ai.risk import assess
from hub.auth import ensure_org
from hub.runtime import Hub
from tests.conftest import bearer
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, opportunity_body, peak, settle

START = datetime(2025, 1, 1, 9, tzinfo=UTC)
PIPELINE = PinnedPipeline(name="peak", version=1, spec=peak())


def call(at: datetime) -> dict:
    return {"type": "call.recorded", "data": {"call_id": "c"}, "source": {"provider": "gong", "event_id": "e"},
            "at": at.isoformat()}


def history_state(i: int, rng: random.Random) -> OpportunityState:
    """Deal ``i``: calls recorded in its first days (in 85 % of the won deals, 15 % of the lost ones); won deals
    reach Keep, lost ones are closed lost through the hub (no ``status`` in the CRM body)."""
    created = START + timedelta(days=i // 2)
    won = rng.random() < 0.5
    closes = created + timedelta(days=rng.randint(20, 50))
    calls = rng.random() < (0.85 if won else 0.15)
    events = [call(created + timedelta(days=2)), call(created + timedelta(days=5))] if calls else []
    visits = [StageVisit(stage="prospect", entered_at=created, exited_at=closes if won else None)]
    if won:
        visits.append(StageVisit(stage="keep", entered_at=closes))
    return OpportunityState(
        org_id="acme", opportunity_id=f"h{i:03d}", opp={"name": f"Deal {i}", "amount": 1000.0, "product": "Suite"},
        body_hash=str(i), pipeline=PIPELINE, stage="keep" if won else "prospect", visits=visits, events=events,
        closed=None if won else {"outcome": "lost", "reason": "no budget", "at": closes.isoformat()},
        created_at=created, updated_at=closes + timedelta(days=30), revision=1)


async def project_history(hub: Hub, n: int = 240) -> None:
    async with hub.db.session() as session:
        await ensure_org(session, "acme")
    rng = random.Random(7)
    env, acts = ActivityEnvironment(), OpportunityActivities(hub)
    for i in range(n):
        await env.run(acts.project, ProjectInput(workflow_id=f"opportunity/acme/h{i:03d}", state=history_state(i, rng)))


async def test_outcomes_take_lost_from_the_hubs_close(hub: Hub) -> None:
    await project_history(hub, 40)
    async with hub.db.session() as session:
        outcomes = await opportunity_outcomes(session, "acme")
    lost = [o for o in outcomes if o.won is False]
    assert lost and len(lost) + sum(o.won is True for o in outcomes) == 40  # every deal closed, none open
    first = lost[0]
    assert first.closed == datetime.fromisoformat(first.record.state["closed"]["at"]).date()
    assert all(o.closed is not None and o.closed > o.created for o in outcomes)
    deal = as_deal(next(o for o in outcomes if o.record.state["events"]))
    assert [k for _, k in deal.activity or []] == ["call", "call"] and deal.product == "Suite"


async def test_a_model_trained_on_hub_history_uses_the_signals(hub: Hub) -> None:
    await project_history(hub)
    result = await ActivityEnvironment().run(AiRetraining(hub).retrain, RetrainInput(org_id="acme"))
    deals = result.outcomes["deals"]
    assert deals["promoted"], deals
    assert deals["challenger_brier"] < deals["base_rate_brier"]
    model = await service.active_model(hub, "acme", "deals")
    assert isinstance(model, DealModel) and model.metrics["signals"] == list(SIGNALS)

    now = START + timedelta(days=400)
    opp = {"name": "Open deal", "amount": 1000.0, "product": "Suite", "created_at": (now - timedelta(days=10)).isoformat()}
    with_calls = assess(opp, "engage", [call(now - timedelta(days=8)), call(now - timedelta(days=5))], now, model)
    without = assess(opp, "engage", [], now, model)
    assert with_calls.win_probability > without.win_probability + 0.1
    assert any(f.code == "model.calls_recorded" and f.effect < 0 for f in with_calls.factors)  # lowers the risk


async def test_closed_lost_through_the_api_is_a_lost_outcome(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, peak())
    async with main_worker(hub, client, task_queue, AiStandIn()):
        for oid in ("kept", "dropped"):
            assert (await api.put(f"/v1/opportunities/{oid}", json=opportunity_body(), headers=h)).status_code == 200
        closed = await api.post("/v1/opportunities/dropped:close-lost", headers=h,
                                json={"reason": "Budget cut", "actor": {"id": "u-ae", "role": "ae"}})
        assert closed.status_code == 200, closed.text
        await settle(api, admin_key, "dropped")
    async with hub.db.session() as session:
        outcomes = {o.record.id: o for o in await opportunity_outcomes(session, "acme")}
    assert "status" not in outcomes["dropped"].record.state["opp"]  # the CRM never said so: the hub's close did
    assert outcomes["dropped"].won is False and outcomes["dropped"].closed == datetime.now(UTC).date()
    assert outcomes["kept"].won is None and outcomes["kept"].closed is None


def test_models_from_before_the_signals_load_and_score() -> None:
    """A model pickled before the signals existed has no ``signals`` on its fit: it scores as before, events
    or not."""
    rng = random.Random(3)
    deals = []
    for i in range(200):
        created = date(2024, 1, 1) + timedelta(days=i)
        product = rng.choice(["Alpha", "Beta"])
        deals.append(Deal(id=f"d{i}", stage=None, won=int(rng.random() < (0.8 if product == "Alpha" else 0.2)),
                          product=product, account=None, owner=None, value=1000.0, created=created,
                          closed=created + timedelta(days=30)))
    trained = train_deals(deals)
    assert trained.metrics["signals"] == []  # a CSV history records no events: no signal features
    for name in ("signals",):  # what an old pickle's fit lacks
        del trained.fit.__dict__[name]
    old = artifacts.loads(artifacts.dumps(trained), kind="deals")
    assert isinstance(old, DealModel)
    open_deal = Deal(id="o", stage=None, won=None, product="Alpha", account=None, owner=None, value=1000.0,
                     created=date(2025, 1, 1))
    busy = Deal(**{**open_deal.__dict__, "activity": [(date(2025, 1, 3), "call")]})
    [a], [b] = old.score([open_deal], [date(2025, 1, 10)]), old.score([busy], [date(2025, 1, 10)])
    assert a.win_probability == b.win_probability and 0.5 < a.win_probability < 1
    assert not any(f.feature in SIGNALS for f in a.factors)
