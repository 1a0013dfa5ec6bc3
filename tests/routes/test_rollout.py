"""Staged rollout of a rule version: stable hash bucketing through OpenFeature, the version each run records on
the real workflows, promote and rollback through the API, each audited."""

from __future__ import annotations

import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from temporalio.client import Client

from hub.auth import create_key
from hub.flags import rule_version
from hub.runtime import Hub
from rules.defaults import EXAMPLES_DIR
from rules.loader import load_path
from tests.conftest import bearer
from tests.routes.test_backtest import PIPELINE
from tests.routes.test_rule_runs import until
from tests.workflows.opportunity_kit import apply, rule
from worker import build_workers

ROLLOUT = {"stable": 1, "candidate": 2, "percent": 30.0, "branches": ["apac"]}


def test_a_30_percent_rollout_picks_the_same_30_percent_every_time() -> None:
    ids = [f"opp-{i}" for i in range(10_000)]
    chosen = {i for i in ids if rule_version("acme", "greet", ROLLOUT, i, "emea") == 2}
    assert 2_850 <= len(chosen) <= 3_150  # 30% ± 1.5 points
    assert chosen == {i for i in ids if rule_version("acme", "greet", ROLLOUT, i, "emea") == 2}  # deterministic
    fewer = {i for i in ids if rule_version("acme", "greet", {**ROLLOUT, "percent": 10.0}, i, "emea") == 2}
    assert fewer < chosen and 850 <= len(fewer) <= 1_150  # widening keeps whom a smaller share chose
    other_rule = {i for i in ids if rule_version("acme", "other", ROLLOUT, i, "emea") == 2}
    assert other_rule != chosen  # each rule buckets on its own
    assert all(rule_version("acme", "greet", ROLLOUT, i, "apac") == 2 for i in ids[:100])  # a named branch: all
    assert all(rule_version("acme", "greet", {**ROLLOUT, "percent": 0.0}, i, "emea") == 1 for i in ids[:1000])


async def test_the_shipped_backtest_and_rollout_examples_are_accepted(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    h = bearer(admin_key)
    (shipped,) = [d.data for d in load_path(EXAMPLES_DIR / "deal-rules.yaml").documents
                  if d.data["metadata"]["name"] == "big-deal-to-acquire"]  # fmt: skip
    await apply(hub, shipped)
    backtest, rollout = _bodies(EXAMPLES_DIR / "backtest-and-rollout.http")[:2]
    answer = await api.post("/v1/rules/big-deal-to-acquire:backtest", json=backtest, headers=h)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["draft"], answer.json()["compare_to"], answer.json()["compare"]["fired"]) == (True, 1, 0)
    await apply(hub, backtest["draft"])
    started = await api.post("/v1/rules/big-deal-to-acquire:rollout", json=rollout, headers=h)
    assert started.status_code == 200, started.text
    assert (started.json()["stable_version"], started.json()["branches"]) == (1, ["emea"])


def _bodies(path: Path) -> list[dict]:
    """The JSON bodies of an HTTP client file's requests (after each request's blank line)."""
    requests = path.read_text().split("###")[1:]
    return [json.loads(r.split("\n\n", 1)[1]) for r in requests if "\n\n{" in r]


def greet(title: str) -> dict:
    return rule("greet", "opportunity.created", [{"opportunity.add_task": {"title": title}}])


async def test_runs_record_their_version_and_promote_and_rollback_are_audited(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    suffix = uuid.uuid4().hex[:6]
    async with AsyncExitStack() as stack:
        await apply(hub, PIPELINE)
        for title in ("v1", "v2"):
            assert (await api.put("/v1/rules/greet", json=greet(title), headers=h)).status_code in (200, 201)
        async with hub.db.session() as session:
            viewer = bearer(await create_key(session, "acme", "viewer"))
        refused = await api.post("/v1/rules/greet:rollout", json={"version": 2, "percent": 30}, headers=viewer)
        assert refused.status_code == 403
        started = await api.post("/v1/rules/greet:rollout", json={"version": 2, "percent": 30}, headers=h)
        assert started.status_code == 200, started.text
        assert (started.json()["stable_version"], started.json()["candidate_version"]) == (1, 2)
        assert (await api.get("/v1/rules/greet/rollout", headers=viewer)).json()["percent"] == 30.0
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)

        async def register(oid: str, branch: str = "emea") -> dict:
            body = {"name": oid, "branch": branch, "owner_role": "ae", "amount": 1.0}
            assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
            runs = await until(api, admin_key, f"/v1/rule-runs?rule=greet&opportunity={oid}", lambda b: b["items"])
            (run,) = runs["items"]
            return run

        targeting = {"stable": 1, "candidate": 2, "percent": 30.0, "branches": []}
        versions = {}
        for n in range(16):
            oid = f"ro-{n}-{suffix}"
            run = await register(oid)
            assert run["version"] == rule_version("acme", "greet", targeting, oid, "emea"), oid
            assert run["actions"][0]["params"]["title"] == f"v{run['version']}"
            versions[oid] = run["version"]
        assert set(versions.values()) == {1, 2}, versions

        # a named branch gets the candidate whatever its bucket
        assert (await api.post("/v1/rules/greet:rollout", json={"version": 2, "percent": 0, "branches": ["apac"]},
                               headers=h)).status_code == 200  # fmt: skip
        assert (await register(f"ro-apac-{suffix}", "apac"))["version"] == 2
        assert (await register(f"ro-emea-{suffix}"))["version"] == 1

        promoted = await api.post("/v1/rules/greet:promote", headers=h)
        assert promoted.json() == {"outcome": "unchanged", "version": 2, "released": 2}
        assert (await api.get("/v1/rules/greet/rollout", headers=h)).status_code == 404
        assert (await register(f"ro-after-{suffix}"))["version"] == 2

        assert (await api.put("/v1/rules/greet", json=greet("v3"), headers=h)).status_code == 200
        assert (await api.post("/v1/rules/greet:rollout", json={"version": 3, "percent": 50}, headers=h)).json()[
            "stable_version"] == 2  # fmt: skip
        rolled_back = await api.post("/v1/rules/greet:rollback", headers=h)
        assert rolled_back.json() == {"outcome": "changed", "version": 4, "released": 2}
        run = await register(f"ro-back-{suffix}")
        assert (run["version"], run["actions"][0]["params"]["title"]) == (4, "v2")
        assert (await api.post("/v1/rules/greet:rollback", headers=h)).status_code == 404

    audit = (await api.get("/v1/audit?resource=rule/greet&limit=50", headers=h)).json()["items"]
    actions = [e["action"] for e in audit]
    for action in ("rule.rollout_started", "rule.rollout_changed", "rule.promoted", "rule.rolled_back"):
        assert action in actions, actions
    back = next(e for e in audit if e["action"] == "rule.rolled_back")
    assert {k: back["detail"][k] for k in ("stable", "candidate", "percent", "released", "version")} == {
        "stable": 2, "candidate": 3, "percent": 50.0, "released": 2, "version": 4}  # fmt: skip
    assert back["actor"].startswith("key:")


async def test_under_a_rollout_the_relay_and_the_date_rules_know_both_versions(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, task_queue: str
) -> None:
    from activities.date_triggers import date_rules
    from activities.rule_runs import current_rules
    from activities.webhook_types import MappedEvent
    from rules.engine import compile_rules
    from webhooks.relay import Relay

    h = bearer(admin_key)
    paid = rule("watch", "payment.received", [{"opportunity.add_task": {"title": "paid"}}])
    stale = rule("watch", "opportunity.stale", [{"opportunity.add_task": {"title": "stale"}}])
    stale["spec"]["days"] = 30
    for doc in (paid, stale):
        assert (await api.put("/v1/rules/watch", json=doc, headers=h)).status_code in (200, 201)
    started = await api.post("/v1/rules/watch:rollout", json={"version": 2, "percent": 10}, headers=h)
    assert started.status_code == 200, started.text
    relay = Relay(hub, task_queue=task_queue)
    # 90% of opportunities (and the org's own events) still run version 1, on payment.received: the relay must not
    # drop an org-level payment as "no rule listens" because the newest version listens to something else
    assert await relay._needs_workflow("acme", [MappedEvent(type="payment.received")])
    async with hub.db.session() as session:
        runnable = (await current_rules(session, "acme")).runnable
    assert date_rules(compile_rules(runnable), 86400).days == {"opportunity.stale": [30]}  # what broadcast signals
