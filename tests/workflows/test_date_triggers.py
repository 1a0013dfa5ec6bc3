"""Relative-date triggers end to end on the real Temporal server: ``opportunity.close_date_approaching``
(``days_before``) and ``opportunity.stale`` (``days``) fire from the opportunity workflow's durable timers, re-armed
when the CRM moves the close date or something happens to the deal, at most once per arming, never for a closed
opportunity; a rule applied later reaches running opportunities through the rules API.

A test day lasts one second (``HUB_DAY_SECONDS=1``, refused in production); close dates are ISO date-times a few
seconds ahead. Every firing is checked against the instant its timer was due, so a timer that fires early fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from activities.opportunity_types import (
    CLOSE_DATE_APPROACHING,
    STALE,
    DateRules,
    OpportunityState,
    PinnedPipeline,
    TransitionRecord,
    close_instant,
    date_points,
)
from hub.runtime import Hub
from hub.settings import Settings
from tests.conftest import bearer
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, rule

PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "open"},
    "spec": {"stages": [{"key": "open", "name": "Open", "color": "#6B7280", "probability": 0.1},
                        {"key": "won", "name": "Won", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "open", "to": "won", "roles": ["ae"]}]},
}  # fmt: skip
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path, vault_keys: str, task_queue: str) -> Settings:
    """A test day of one second."""
    return Settings(data_dir=tmp_path / "data", vault_keys=vault_keys, task_queue=task_queue, day_seconds=1)


def date_rule(name: str, on: str, days: int, title: str) -> dict:
    doc = rule(name, on, [{"opportunity.add_task": {"title": title}}])
    doc["spec"]["days_before" if on == CLOSE_DATE_APPROACHING else "days"] = days
    return doc


def body(close: datetime | None = None, amount: float = 1000.0) -> dict:
    out: dict = {"name": "Dated deal", "branch": "emea", "owner_role": "ae", "amount": amount}
    if close is not None:
        out["close_date"] = close.isoformat()
    return out


def tasks(view: dict, prefix: str) -> list[dict]:
    return [t for t in view["opportunity"].get("tasks", []) if t["title"].startswith(prefix)]


async def until(api: httpx.AsyncClient, key: str, opp: str, check: Callable[[dict], bool], timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view = (await api.get(f"/v1/opportunities/{opp}", headers=bearer(key))).json()
        if view.get("pending_effects") == 0 and check(view):
            return view
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.1)


def fired_at(view: dict, trigger: str) -> list[datetime]:
    return [datetime.fromisoformat(r["at"]) for r in view["rule_runs"] if r["trigger"] == trigger and r["fired"]]


# ---------------------------------------------------------------- the timing, pure


def state(opp: dict, rules: DateRules | None, **changes: object) -> OpportunityState:
    pipeline = PinnedPipeline(name="open", version=1, spec=PIPELINE)
    return OpportunityState(
        org_id="acme", opportunity_id="o", opp=opp, body_hash="h", pipeline=pipeline, stage="open",
        history=[TransitionRecord(seq=1, from_stage=None, to_stage="open", at=T0, pipeline_version=1)],
        created_at=T0, updated_at=T0, date_rules=rules, **changes,
    )  # fmt: skip


def test_close_dates_are_dates_or_instants() -> None:
    assert close_instant("2030-01-31") == datetime(2030, 1, 31, tzinfo=UTC)
    assert close_instant("2030-01-31T10:30:00+02:00") == datetime(2030, 1, 31, 8, 30, tzinfo=UTC)
    assert close_instant("2030-01-31T10:30:00") == datetime(2030, 1, 31, 10, 30, tzinfo=UTC)
    assert close_instant("soon") is None and close_instant(None) is None and close_instant(20300131) is None


def test_date_points_count_back_from_the_close_date_and_on_from_the_last_activity() -> None:
    rules = DateRules(days={CLOSE_DATE_APPROACHING: [3, 7], STALE: [14]})
    points = {p.key: p for p in date_points(state({"close_date": "2030-02-01"}, rules))}
    week = points[f"{CLOSE_DATE_APPROACHING}:7"]
    assert week.at == datetime(2030, 1, 25, tzinfo=UTC) and week.until == datetime(2030, 2, 1, tzinfo=UTC)
    assert week.event() == {"type": CLOSE_DATE_APPROACHING, "days": 7, "days_before": 7,
                            "close_date": "2030-02-01T00:00:00+00:00", "due_at": "2030-01-25T00:00:00+00:00"}
    assert points[f"{CLOSE_DATE_APPROACHING}:3"].at == datetime(2030, 1, 29, tzinfo=UTC)
    assert points[f"{STALE}:14"].at == T0 + timedelta(days=14)  # no activity recorded: since the last transition
    active = state({}, rules, last_activity_at=T0 + timedelta(days=2))
    assert [(p.key, p.at, p.arming) for p in date_points(active)] == [
        (f"{STALE}:14", T0 + timedelta(days=16), (T0 + timedelta(days=2)).isoformat())]  # no close date: no reminder
    test_day = DateRules(days={STALE: [14]}, day_seconds=1)
    assert date_points(state({}, test_day))[0].at == T0 + timedelta(seconds=14)


def test_closed_archived_or_unknown_rules_arm_nothing() -> None:
    rules = DateRules(days={CLOSE_DATE_APPROACHING: [3], STALE: [14]})
    opp = {"close_date": "2030-02-01"}
    assert len(date_points(state(opp, rules))) == 2
    assert date_points(state(opp, rules, closed={"outcome": "lost"})) == []
    assert date_points(state(opp, rules, archived=True)) == []
    assert date_points(state(opp, None)) == []


def test_production_refuses_a_test_day(vault_keys: str) -> None:
    production = {"env": "production", "vault_keys": vault_keys, "database_url": "postgresql+asyncpg://h/db"}
    assert Settings(**production).day_seconds == 86400
    with pytest.raises(ValueError, match="HUB_DAY_SECONDS is for tests only"):
        Settings(**production, day_seconds=1)


# ---------------------------------------------------------------- the rules API: apply-time checks, dry-run


async def test_the_rules_api_refuses_missing_days_and_dry_runs_date_events(api: httpx.AsyncClient, admin_key: str) -> None:
    h = bearer(admin_key)
    yaml_rule = "apiVersion: fulqrun.io/v1\nkind: Rule\nmetadata: {name: idle}\nspec:\n  on: opportunity.stale\n" \
                "  do:\n    - opportunity.add_task: {title: nudge}\n"
    refused = await api.put("/v1/rules/idle", content=yaml_rule, headers={**h, "Content-Type": "application/yaml"})
    assert refused.status_code == 422
    assert [(e["line"], e["column"], e["field"], e["message"]) for e in refused.json()["errors"]] == [
        (5, 3, "spec", "missing required field 'days' (a number of days, 1 or more) for on: opportunity.stale")]
    bad = await api.put("/v1/rules/idle", content=yaml_rule.replace("stale\n", "stale\n  days: -2\n"),
                        headers={**h, "Content-Type": "application/yaml"})
    assert [(e["line"], e["column"], e["message"]) for e in bad.json()["errors"]] == [
        (6, 9, "Input should be greater than or equal to 1")]

    drafts = [date_rule("week", CLOSE_DATE_APPROACHING, 7, "{{ opp.name }}: {{ event.days_before }} days left"),
              date_rule("idle", STALE, 14, "idle")]
    event = {"type": CLOSE_DATE_APPROACHING, "days": 7, "opp": {"id": "o1", "name": "Globex"},
             "event": {"days_before": 7, "close_date": "2030-01-31T00:00:00+00:00"}}
    report = (await api.post("/v1/rules:test", json={"event": event, "rules": drafts}, headers=h)).json()
    outcomes = {o["rule"]: o for o in report["outcomes"]}
    assert outcomes["week"]["fired"] and outcomes["week"]["actions"] == [
        {"name": "opportunity.add_task", "params": {"title": "Globex: 7 days left"}, "runs_for": "opportunity",
         "problem": None, "step": None}]
    assert not outcomes["idle"]["fired"] and outcomes["idle"]["reason"].startswith("trigger mismatch")
    other = (await api.post("/v1/rules:test", json={"event": {**event, "days": 3}, "rules": drafts}, headers=h)).json()
    assert other["fired"] == 0


# ---------------------------------------------------------------- end to end


async def test_close_date_approaching_fires_once_per_close_date(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str, task_queue: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, PIPELINE)
    put = await api.put("/v1/rules/close-soon", headers=h, json=date_rule(
        "close-soon", CLOSE_DATE_APPROACHING, 2, "Closes in {{ event.days_before }} days: {{ event.close_date }}"))
    assert put.status_code == 201, put.text
    async with main_worker(hub, client, task_queue, AiStandIn()):
        first = datetime.now(UTC) + timedelta(seconds=6)
        assert (await api.put("/v1/opportunities/c1", json=body(first), headers=h)).status_code == 200
        view = await until(api, admin_key, "c1", lambda v: tasks(v, "Closes"))
        [task] = tasks(view, "Closes")
        assert task["title"] == f"Closes in 2 days: {first.isoformat()}"
        [at] = fired_at(view, CLOSE_DATE_APPROACHING)
        assert at >= first - timedelta(seconds=2)  # not before the timer was due

        second = datetime.now(UTC) + timedelta(seconds=5)  # the CRM moves the close date: armed again
        assert (await api.put("/v1/opportunities/c1", json=body(second), headers=h)).status_code == 200
        view = await until(api, admin_key, "c1", lambda v: len(tasks(v, "Closes")) == 2)
        assert tasks(view, "Closes")[1]["title"] == f"Closes in 2 days: {second.isoformat()}"
        assert fired_at(view, CLOSE_DATE_APPROACHING)[1] >= second - timedelta(seconds=2)

        past = datetime.now(UTC) - timedelta(seconds=1)  # already closed by date: nothing to remind of
        assert (await api.put("/v1/opportunities/c1", json=body(past, 2.0), headers=h)).status_code == 200
        await asyncio.sleep(max(0.0, (second - datetime.now(UTC)).total_seconds()) + 2.0)
        view = await until(api, admin_key, "c1", lambda v: True)
        assert len(tasks(view, "Closes")) == 2 and len(fired_at(view, CLOSE_DATE_APPROACHING)) == 2


async def test_stale_fires_after_idle_days_and_never_for_a_closed_opportunity(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str, task_queue: str
) -> None:
    h = bearer(admin_key)
    await apply(hub, PIPELINE)
    async with main_worker(hub, client, task_queue, AiStandIn()):
        assert (await api.put("/v1/opportunities/s1", json=body(), headers=h)).status_code == 200
        await until(api, admin_key, "s1", lambda v: True)
        # a rule applied later reaches the running opportunity (the rules API signals the org's date rules)
        put = await api.put("/v1/rules/idle", headers=h,
                            json=date_rule("idle", STALE, 3, "Idle {{ event.days }} days since {{ event.last_activity_at }}"))
        assert put.status_code == 201, put.text
        view = await until(api, admin_key, "s1", lambda v: tasks(v, "Idle"))
        registered = datetime.fromisoformat(view["history"][0]["at"])
        [at] = fired_at(view, STALE)
        assert at >= registered + timedelta(seconds=3)
        assert tasks(view, "Idle")[0]["title"] == f"Idle 3 days since {registered.isoformat()}"

        await asyncio.sleep(4)  # the rule's own task is no activity: not fired again for the same arming
        assert len(fired_at(await until(api, admin_key, "s1", lambda v: True), STALE)) == 1

        touched = datetime.now(UTC)  # the CRM updates the deal: the stale clock starts again
        assert (await api.put("/v1/opportunities/s1", json=body(amount=2000.0), headers=h)).status_code == 200
        view = await until(api, admin_key, "s1", lambda v: len(tasks(v, "Idle")) == 2)
        assert fired_at(view, STALE)[1] >= touched + timedelta(seconds=3)

        closed = await api.post("/v1/opportunities/s1:close-lost", headers=h,
                                json={"reason": "went quiet", "actor": {"id": "u1", "role": "ae"}})
        assert closed.status_code == 200, closed.text
        await asyncio.sleep(4.5)  # past another idle span: nothing fires for a closed opportunity
        view = await until(api, admin_key, "s1", lambda v: True)
        assert len(tasks(view, "Idle")) == 2 and len(fired_at(view, STALE)) == 2
