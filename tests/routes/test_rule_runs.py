"""``GET /v1/rule-runs`` and ``POST …/actions/{n}:retry`` on the real workflows; ``GET /v1/audit`` and
``fulqrun-hub audit``."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from contextlib import AsyncExitStack

import httpx
import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from app.cli import app
from hub.auth import create_key
from hub.runtime import Hub
from hub.settings import Settings
from tests.conftest import bearer
from tests.webhooks.conftest import make_connection, post_signed
from tests.workflows.opportunity_kit import apply, rule
from tests.workflows.test_rule_matrix import OPEN_PIPELINE, Receiver
from webhooks.relay import Relay
from worker import build_workers


async def until(api: httpx.AsyncClient, key: str, path: str, check, timeout: float = 60) -> dict:
    """GET ``path`` until ``check(body)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await api.get(path, headers=bearer(key))).json()
        if check(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def test_failed_actions_are_listed_alert_and_are_retried_under_the_same_key(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    async with AsyncExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        hook = {"http.post": {"url": f"{receiver.url}/hook", "json": {"opp": "{{ opp.id }}"}}}
        await apply(
            hub, OPEN_PIPELINE,
            rule("notify-erp", "stage.entered", [hook, {"opportunity.add_task": {"title": "Call"}}]),
            rule("org-hook", "payment.failed", [{"http.post": {"url": f"{receiver.url}/hook"}}]),
            rule("alert-failures", "automation.failed",
                 [{"http.post": {"url": f"{receiver.url}/alerts", "json": {"rule": "{{ event.rule }}",
                                                                         "error": "{{ event.error }}"}}}]),
        )  # fmt: skip
        receiver.fail(400, path="^/hook$", times=2)
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        body = {"name": "Runs deal", "branch": "emea", "owner_role": "ae", "amount": 10.0}
        assert (await api.put("/v1/opportunities/r1", json=body, headers=h)).status_code == 200
        generic = await make_connection(hub, "generic_oauth2", secrets="whsec_" + base64.b64encode(b"s" * 24).decode())
        event = json.dumps({"id": f"evt-{uuid.uuid4().hex}", "type": "payment.failed", "data": {}}).encode()
        assert (await post_signed(api, hub, "generic_oauth2", generic, event, "application/json")).status_code == 200
        await Relay(hub).drain()

        failed = await until(api, admin_key, "/v1/rule-runs?status=failed",
                             lambda b: {r["rule"] for r in b["items"]} == {"notify-erp", "org-hook"})
        opp_run = next(r for r in failed["items"] if r["rule"] == "notify-erp")
        assert (opp_run["trigger"], opp_run["opportunity_id"], opp_run["status"]) == ("stage.entered", "r1", "failed")
        http, task = opp_run["actions"]
        assert (http["status"], http["attempts"], http["params"]) == (
            "failed", 1, {"url": f"{receiver.url}/hook", "json": {"opp": "r1"}})
        assert "HttpClientError" in http["error"] and http["duration_ms"] >= 0
        assert (task["status"], task["output"]["task"]) == ("ok", task["idempotency_key"])
        # a failed action raised automation.failed, which a rule routed to a person
        alerts = await until(api, admin_key, "/v1/rule-runs?trigger=automation.failed",
                             lambda b: len(b["items"]) == 2)
        assert {r["status"] for r in alerts["items"]} == {"ok"}
        assert sorted(c.json()["rule"] for c in receiver.calls("^/alerts$")) == ["notify-erp", "org-hook"]
        listed = (await api.get("/v1/rule-runs?opportunity=r1&rule=notify-erp", headers=h)).json()["items"]
        assert [r["id"] for r in listed] == [opp_run["id"]]

        first_keys = [c.headers["idempotency-key"] for c in receiver.calls("^/hook$")]
        ok_task = await api.post(f"/v1/rule-runs/{opp_run['id']}/actions/1:retry", headers=h)
        assert ok_task.status_code == 409
        viewer = await _key(hub, "viewer")
        assert (await api.post(f"/v1/rule-runs/{opp_run['id']}/actions/0:retry",
                               headers=bearer(viewer))).status_code == 403
        for run in failed["items"]:
            retried = await api.post(f"/v1/rule-runs/{run['id']}/actions/0:retry", headers=h)
            assert retried.status_code == 202, retried.text
            assert retried.json()["attempt"] == 2
            done = await until(api, admin_key, f"/v1/rule-runs/{run['id']}", lambda b: b["status"] == "ok")
            assert done["actions"][0]["attempts"] == 2 and done["actions"][0]["output"]["status"] == 200
        again = [c.headers["idempotency-key"] for c in receiver.calls("^/hook$")][len(first_keys):]
        assert sorted(again) == sorted(first_keys)  # the same keys as the first attempts
        view = (await api.get("/v1/opportunities/r1", headers=h)).json()
        assert view["rule_runs"][0]["actions"][0]["ok"] and view["rule_runs"][0]["actions"][0]["attempts"] == 2

    page = (await api.get("/v1/rule-runs?limit=1", headers=h)).json()
    second = (await api.get(f"/v1/rule-runs?limit=1&cursor={page['next_cursor']}", headers=h)).json()
    assert second["items"][0]["id"] < page["items"][0]["id"]
    assert (await api.get("/v1/rule-runs?cursor=bogus", headers=h)).status_code == 400

    audit = (await api.get("/v1/audit?action=rule_run.action_retried", headers=h)).json()
    assert [e["resource"] for e in audit["items"]] == [f"rule_run/{r['id']}" for r in reversed(failed["items"])]
    assert (await api.get("/v1/audit", headers=bearer(viewer))).status_code == 403


async def _key(hub: Hub, role: str) -> str:
    async with hub.db.session() as session:
        return await create_key(session, "acme", role)


async def test_audit_lists_filters_and_pages_and_the_cli_prints_it(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = bearer(admin_key)
    for name in ("a-rule", "b-rule"):
        doc = rule(name, "payment.received", [{"http.post": {"url": "https://example.com/x"}}])
        assert (await api.put(f"/v1/rules/{name}", json=doc, headers=h)).status_code == 201
    assert (await api.delete("/v1/rules/a-rule", headers=h)).status_code == 200
    everything = (await api.get("/v1/audit", headers=h)).json()["items"]
    assert [(e["action"], e["resource"]) for e in everything[:3]] == [
        ("rule.deleted", "rule/a-rule"), ("rule.created", "rule/b-rule"), ("rule.created", "rule/a-rule")]
    only_a = (await api.get("/v1/audit?resource=rule/a-rule", headers=h)).json()["items"]
    assert [e["action"] for e in only_a] == ["rule.deleted", "rule.created"]
    first = (await api.get("/v1/audit?limit=2", headers=h)).json()
    rest = (await api.get(f"/v1/audit?limit=50&cursor={first['next_cursor']}", headers=h)).json()
    assert [e["id"] for e in first["items"] + rest["items"]] == [e["id"] for e in everything]

    monkeypatch.setenv("HUB_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("HUB_DATABASE_URL", str(hub.db.engine.url))
    result = await asyncio.to_thread(CliRunner().invoke, app, ["audit", "--org", "acme", "--resource", "rule/a-rule",
                                                               "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["action"] for line in result.stdout.splitlines()] == ["rule.deleted", "rule.created"]
