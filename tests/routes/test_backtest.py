"""``POST /v1/rules/{name}:backtest`` on history recorded by the real workflows: transitions, delivered domain
events and org-level inbox events; counts, opportunities, rendered actions, the diff to another version,
NDJSON progress, drafts, errors and roles; and that nothing runs."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from app.cli import app
from hub import bounded
from hub.auth import create_key
from hub.problems import Problem
from hub.runtime import Hub
from hub.settings import get_settings
from hub.store.inbox import WebhookEvent
from hub.store.opportunities import states_between
from routes import rule_versions
from tests.conftest import bearer
from tests.routes.test_rule_runs import until
from tests.webhooks.conftest import make_connection, post_signed
from tests.workflows.opportunity_kit import apply, rule
from webhooks import backtest as backtest_module
from webhooks.relay import Relay
from worker import build_workers

PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "simple"},
    "spec": {"stages": [{"key": "prospect", "name": "Prospect", "color": "#6B7280", "probability": 0.1},
                        {"key": "engage", "name": "Engage", "color": "#2563EB", "probability": 0.3}],
             "transitions": [{"from": "prospect", "to": "engage", "roles": ["ae"]}]},
}  # fmt: skip
TASK = {"opportunity.add_task": {"title": "Big deal {{ opp.name }} ({{ opp.stage }})"}}


def big_deal(threshold: float) -> dict:
    return rule("big-deal", "stage.entered", [TASK], stage="engage", when=f"opp.amount >= {threshold}")


@pytest.fixture
async def recorded(api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str) -> dict:
    """Three opportunities moved to Engage, a payment event delivered to one, an org-level event; the rule
    ``big-deal`` v1 (>= 50,000) ran on them, v2 (>= 10,000) is applied afterwards."""
    h = bearer(admin_key)
    began = datetime.now(UTC) - timedelta(seconds=1)
    ids = {amount: f"o-{amount}-{uuid.uuid4().hex[:6]}" for amount in ("80k", "20k", "5k")}  # workflow ids: per test
    async with AsyncExitStack() as stack:
        await apply(hub, PIPELINE, big_deal(50000.0))
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        for oid, amount in ((ids["80k"], 80000.0), (ids["20k"], 20000.0), (ids["5k"], 5000.0)):
            body = {"name": f"Deal {amount:.0f}", "branch": "emea", "owner_role": "ae", "amount": amount}
            assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
            moved = await api.post(f"/v1/opportunities/{oid}/transitions",
                                   json={"to": "engage", "actor": {"id": "u1", "role": "ae"}}, headers=h)
            assert moved.status_code == 200, moved.text
        generic = await make_connection(hub, "generic_oauth2", secrets="whsec_" + base64.b64encode(b"s" * 24).decode())
        for data in ({"opportunity_id": ids["20k"], "amount": 700}, {"amount": 300}):
            event = json.dumps({"id": f"evt-{uuid.uuid4().hex}", "type": "payment.received", "data": data}).encode()
            assert (await post_signed(api, hub, "generic_oauth2", generic, event, "application/json")).status_code == 200
        await Relay(hub).drain()
        await _settled(hub, ids["20k"])
        await until(api, admin_key, "/v1/rule-runs?rule=big-deal", lambda b: len(b["items"]) == 3)
    await apply(hub, big_deal(10000.0))
    window = {"since": began.isoformat(), "until": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
    return {"window": window, "ids": ids}


async def test_backtest_counts_renders_and_diffs_without_running_anything(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, recorded: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, window, ids = bearer(admin_key), recorded["window"], recorded["ids"]
    runs_before = (await api.get("/v1/rule-runs?limit=200", headers=h)).json()["items"]
    tasks_before = (await api.get(f"/v1/opportunities/{ids['20k']}", headers=h)).json()["opportunity"].get("tasks")

    answer = await api.post("/v1/rules/big-deal:backtest", json={**window, "compare_to": 1}, headers=h)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["rule"], report["version"], report["compare_to"], report["draft"]) == ("big-deal", 2, 1, False)
    # 3 registrations + 3 moves to Engage + 1 delivered payment + 1 org-level inbox event
    assert report["events"] == 8
    assert report["evaluated"] == 6  # stage.entered of each registration and move
    assert report["fired"] == 2
    assert report["opportunities"] == {"count": 2, "ids": sorted([ids["20k"], ids["80k"]])}
    firing = next(f for f in report["firings"] if f["opportunity"] == ids["20k"])
    assert (firing["source"], firing["type"], firing["stage"]) == ("transition", "stage.entered", "engage")
    assert firing["actions"] == [{"name": "opportunity.add_task", "params": {"title": "Big deal Deal 20000 (engage)"},
                                  "runs_for": "opportunity", "problem": None}]  # fmt: skip
    compare = report["compare"]
    assert (compare["fired"], compare["opportunities"]["ids"]) == (1, [ids["80k"]])
    assert [f["opportunity"] for f in compare["only_version"]["firings"]] == [ids["20k"]]
    assert compare["only_compare_to"]["count"] == 0 and compare["changed_actions"]["count"] == 0

    # nothing ran: no new rule run, no task
    assert (await api.get("/v1/rule-runs?limit=200", headers=h)).json()["items"] == runs_before
    assert (await api.get(f"/v1/opportunities/{ids['20k']}", headers=h)).json()["opportunity"].get("tasks") == tasks_before

    # streamed: one progress line per chunk, then the same report; the org's evaluation CPU budget spent after the
    # first chunk, every later one waits for it to refill (Retry-After) instead of failing
    monkeypatch.setattr(backtest_module, "CHUNK", 2)
    monkeypatch.setattr(bounded, "CPU_BURST", 0.0)
    monkeypatch.setattr(bounded, "CPU_SHARE", 0.01)  # a chunk's CPU takes a second or more to earn back
    monkeypatch.setattr(bounded, "MAX_WAIT_SECONDS", 0.0)  # more than an evaluation waits for itself: 429s
    monkeypatch.setattr(bounded, "_budgets", {})
    refused: list[int] = []

    async def spied(*args: object, **kwargs: object) -> object:
        try:
            return await bounded.evaluate(*args, **kwargs)
        except Problem as exc:
            refused.append(exc.status)
            raise

    monkeypatch.setattr(rule_versions, "evaluate", spied)
    streamed = await api.post("/v1/rules/big-deal:backtest", json={**window, "compare_to": 1},
                              headers={**h, "Accept": "application/x-ndjson"})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert [line["progress"]["items"] for line in lines[:-1]] == [2, 4, 6]
    assert lines[-2]["progress"] == {"items": 6, "of": 6, "fired": 2}
    assert lines[-1]["report"] == report
    assert refused and set(refused) == {429}  # the budget ran out, and the backtest waited for it

    # the old version alone, and a window after everything
    v1 = (await api.post("/v1/rules/big-deal:backtest", json={**window, "version": 1}, headers=h)).json()
    assert (v1["version"], v1["fired"], v1["opportunities"]["ids"], "compare" in v1) == (1, 1, [ids["80k"]], False)
    later = {"since": window["until"]}
    assert (await api.post("/v1/rules/big-deal:backtest", json=later, headers=h)).json()["fired"] == 0


async def test_a_draft_sees_delivered_and_org_level_webhook_events(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, recorded: dict
) -> None:
    viewer, window, ids = bearer(await _key(hub, "acme", "viewer")), recorded["window"], recorded["ids"]
    draft = rule("payments", "payment.received", [{"http.post": {"url": "https://erp.example/pay",
                                                                 "json": {"amount": "{{ event.amount }}"}}}],
                 when="int(event.amount) >= 100")  # fmt: skip
    answer = await api.post("/v1/rules/payments:backtest", json={**window, "draft": draft}, headers=viewer)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["version"], report["draft"], report["fired"]) == (None, True, 2)
    sources = {(f["source"], f["opportunity"], f["actions"][0]["params"]["json"]["amount"]) for f in report["firings"]}
    # the delivered one counted once (from the opportunity's record), the org-level one from the inbox
    assert sources == {("event", ids["20k"], "700"), ("webhook", None, "300")}


async def test_the_cli_backtests_from_the_database(
    hub: Hub, recorded: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", hub.db.url)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "cli"))
    get_settings.cache_clear()
    window, ids = recorded["window"], recorded["ids"]
    args = ["rules", "backtest", "big-deal", "--org", "acme", "--since", window["since"][:26],
            "--until", window["until"][:26], "--compare-to", "1"]  # fmt: skip
    try:
        shown = await asyncio.to_thread(CliRunner().invoke, app, args)
        as_json = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--json"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert "big-deal v2: 2 firing(s) on 2 opportunity(ies) over 8 recorded event(s) (6 evaluated)" in shown.stdout
    assert "only v2: 1, only v1: 0, other actions: 0" in shown.stdout
    assert "opportunity.add_task {\"title\": \"Big deal Deal 20000 (engage)\"}" in shown.stdout
    report = json.loads(as_json.stdout)
    assert (report["fired"], report["compare"]["only_version"]["firings"][0]["opportunity"]) == (2, ids["20k"])


async def test_bad_requests_and_other_orgs(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = bearer(admin_key)
    await apply(hub, PIPELINE, big_deal(1.0))
    window = {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}
    both = await api.post("/v1/rules/big-deal:backtest", json={**window, "version": 1, "draft": big_deal(2.0)},
                          headers=h)
    assert both.status_code == 422 and "either version or draft" in both.json()["detail"]
    backwards = {"since": window["until"], "until": window["since"]}
    assert (await api.post("/v1/rules/big-deal:backtest", json=backwards, headers=h)).status_code == 422
    bad = rule("big-deal", "stage.entred", [TASK])
    invalid = await api.post("/v1/rules/big-deal:backtest", json={**window, "draft": bad}, headers=h)
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "spec.on"
    missing = await api.post("/v1/rules/big-deal:backtest", json={**window, "compare_to": 9}, headers=h)
    assert missing.status_code == 404 and "version 9" in missing.json()["detail"]
    async with hub.db.session() as session:  # one inbox event in the window, over a cap of none
        at = datetime(2026, 1, 5, tzinfo=UTC)
        session.add(WebhookEvent(org_id="acme", connection_id="c", provider="stripe", event_id="evt_1",
                                 event_type="invoice.paid", body=b"{}", received_at=at, available_at=at))  # fmt: skip
    monkeypatch.setattr(backtest_module, "MAX_INBOX", 0)
    large = await api.post("/v1/rules/big-deal:backtest", json=window, headers=h)
    assert large.status_code == 422 and "more than 0 inbox events" in large.json()["detail"]
    other = bearer(await _key(hub, "globex", "admin"))
    assert (await api.post("/v1/rules/big-deal:backtest", json=window, headers=other)).status_code == 404
    assert (await api.post("/v1/rules/big-deal:backtest", json=window)).status_code == 401


async def _settled(hub: Hub, paid: str, timeout: float = 60) -> None:
    """Until every projection holds its two transitions and ``paid`` its delivered payment."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with hub.db.session() as session:
            states = await states_between(session, "acme", datetime(2000, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC))
        by_id = {s["opportunity_id"]: s for s in states}
        if (len(by_id) == 3 and all(len(s["history"]) == 2 for s in states)
                and by_id[paid]["events"]):
            return
        assert asyncio.get_running_loop().time() < deadline, json.dumps(states)[:6000]
        await asyncio.sleep(0.1)


async def _key(hub: Hub, org: str, role: str) -> str:
    async with hub.db.session() as session:
        return await create_key(session, org, role)
