"""Durable waits in rules (``wait: {for: …}`` / ``wait: {until: …}``, ``unless``): a ``RuleRunWorkflow`` per run
holds the timer, survives a worker restart, re-checks ``unless`` against the opportunity's current state, and
is listed and cancelled through ``/v1/rule-runs``."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from datetime import datetime
from urllib.parse import urlencode

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.worker import Replayer

from hub.runtime import Hub
from hub.store.connections import secret_owner
from hub.store.secrets import put_secret
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from rules.loader import load_text
from tests.conftest import bearer
from tests.fakes.slack_server import SlackFake
from tests.webhooks.conftest import SECRET, make_connection, post_signed
from tests.workflows.opportunity_kit import SLACK_TOKEN, apply, connect, rule
from tests.workflows.test_opportunity_replay import HISTORIES, HISTORY_VAULT_KEYS, RECORD
from tests.workflows.test_rule_matrix import OPEN_PIPELINE, Receiver
from tests.workflows.test_rule_steps import until_run
from webhooks.relay import Relay
from worker import build_workers
from workflows.rule_runner import RuleRunWorkflow

KEPT = "rule-run-*-run1.json"


@pytest.fixture
def vault_keys() -> str:
    """The keys of the kept histories, so the RuleRunWorkflow histories recorded here can be kept."""
    return HISTORY_VAULT_KEYS


def rule_run_replayer() -> Replayer:
    return Replayer(workflows=[RuleRunWorkflow], data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))


async def replay_and_keep(client: Client, workflow_id: str, name: str) -> None:
    """Replay a RuleRunWorkflow's history now; keep it as ``tests/histories/rule-run-{name}-run1.json``
    (``HUB_RECORD_HISTORIES=1``)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    await rule_run_replayer().replay_workflow(history)
    if RECORD:
        doc = {"workflow_id": workflow_id, "history": json.loads(history.to_json())}
        (HISTORIES / f"rule-run-{name}-run1.json").write_text(json.dumps(doc, indent=1) + "\n")


async def test_replay_kept_rule_run_histories() -> None:
    files = sorted(HISTORIES.glob(KEPT))
    assert {f.name for f in files} == {"rule-run-wait-run1.json", "rule-run-approval-run1.json"}
    for path in files:
        doc = json.loads(path.read_text())
        await rule_run_replayer().replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))



BAD_WAITS = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: bad-waits}
spec:
  on: contract.sent
  do:
    - wait: {for: 3 days}
    - wait: {until: "opp.amount"}
      on_error: stop
    - http.post: {url: "https://example.com"}
      unless: "true"
    - opportunity.add_task: {title: "late"}
"""


def test_waits_are_checked_with_line_and_column() -> None:
    errors = [(e.line, e.column, e.message) for e in load_text(BAD_WAITS, "bad.yaml").errors]
    assert (7, 19, "wait.for must be a duration such as 90s, 15m, 4h or 3d (at most 366d), got '3 days'") in errors
    assert (8, 21, "CEL type error: the expression must be a timestamp, not double") in errors
    assert (9, 7, "on_error does not apply to a wait step") in errors
    assert (11, 7, "unless applies only to a wait step") in errors
    assert any(line == 12 and msg.startswith("opportunity.add_task cannot follow a wait") for line, _, msg in errors)


BAD_APPROVAL = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: bad-approval}
spec:
  on: stage.entered
  do:
    - id: ok
      approval: {channel: "#deals", approvers: [], timeout: soon, color: red}
    - slack.post_message: {channel: "#deals", text: "{{ steps.ok.output.approvd }}"}
"""


def test_approvals_are_checked_with_line_and_column() -> None:
    errors = [(e.line, e.column, e.message) for e in load_text(BAD_APPROVAL, "bad.yaml").errors]
    assert (8, 48, "approval.approvers must be a non-empty list of Slack user ids") in errors
    assert (8, 61, "approval.timeout must be a duration such as 90s, 15m, 4h or 2d, got 'soon'") in errors
    assert (8, 67, "unknown field 'color'") in errors
    assert any(line == 9 and "step 'ok' has no output field 'approvd' (its fields: approved, by, timed_out, until)"
               in msg for line, _, msg in errors), errors


async def test_waits_survive_a_restart_recheck_unless_and_cancel(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    with Receiver() as receiver:
        url = receiver.url
        await apply(
            hub, OPEN_PIPELINE,
            rule("nudge", "opportunity.created", when="opp.name != 'Far'", do=[
                {"id": "hello", "http.post": {"url": f"{url}/before", "json": {"opp": "{{ opp.id }}"}}},
                {"id": "hold", "wait": {"for": "6s"}, "unless": "opp.amount > 1000.0"},
                {"http.post": {"url": f"{url}/after", "json": {"opp": "{{ opp.id }}", "before": "{{ steps.hello.output.status }}",
                                                             "until": "{{ steps.hold.output.until }}"}}},
            ]),
            rule("before-close", "opportunity.created", when="opp.name == 'Far'", do=[
                {"wait": {"until": "timestamp(opp.close_date + 'T00:00:00Z') - duration('168h')"}},
                {"http.post": {"url": f"{url}/never"}},
            ]),
        )  # fmt: skip
        async with AsyncExitStack() as first:
            for worker in build_workers(hub, client):
                await first.enter_async_context(worker)
            for oid, name in (("w1", "Steady"), ("w2", "Grows"), ("w3", "Far")):
                body = {"name": name, "branch": "emea", "owner_role": "ae", "amount": 10.0, "close_date": "2099-01-31"}
                assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
            waiting = await until_run(api, admin_key, "/v1/rule-runs?status=waiting", lambda b: len(b["items"]) == 3)
            # w2 grows past the unless threshold while it waits
            grown = {"name": "Grows", "branch": "emea", "owner_role": "ae", "amount": 5000.0, "close_date": "2099-01-31"}
            assert (await api.put("/v1/opportunities/w2", json=grown, headers=h)).status_code == 200
        # the worker is gone mid-wait; a new one takes over
        by_opp = {r["opportunity_id"]: r for r in waiting["items"]}
        assert by_opp["w3"]["wait_until"].startswith("2099-01-24T00:00:00")
        assert [(a["name"], a["status"]) for a in by_opp["w1"]["actions"]] == [("http.post", "ok"), ("wait", "waiting")]
        steady_until = datetime.fromisoformat(by_opp["w1"]["wait_until"])
        handle = client.get_workflow_handle(by_opp["w1"]["wait_workflow_id"])
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        async with AsyncExitStack() as second:
            for worker in build_workers(hub, client):
                await second.enter_async_context(worker)
            done = await until_run(api, admin_key, "/v1/rule-runs?rule=nudge", timeout=60, check=lambda b: [
                r["status"] for r in b["items"] if r["opportunity_id"] != "w3"] == ["ok", "ok"])
            runs = {r["opportunity_id"]: r for r in done["items"]}
            steady, grows = runs["w1"], runs["w2"]
            assert [a["status"] for a in steady["actions"]] == ["ok", "ok", "ok"] and steady["wait_until"] is None
            assert steady["actions"][1]["output"] == {"until": steady_until.isoformat(), "unless": False}
            [after] = receiver.calls("^/after$")
            assert after.json() == {"opp": "w1", "before": "200", "until": steady_until.isoformat()}
            assert [a["status"] for a in grows["actions"]] == ["ok", "ok", "skipped"]
            assert grows["actions"][1]["output"]["unless"] is True
            assert grows["reason"].endswith("; unless `opp.amount > 1000.0` held when the wait ended")

            far = by_opp["w3"]
            viewer_cancel = await api.post(f"/v1/rule-runs/{far['id']}:cancel", headers=bearer(await _viewer(hub)))
            assert viewer_cancel.status_code == 403
            assert (await api.post(f"/v1/rule-runs/{steady['id']}:cancel", headers=h)).status_code == 409
            cancelled = await api.post(f"/v1/rule-runs/{far['id']}:cancel", headers=h)
            assert cancelled.status_code == 202, cancelled.text
            gone = await until_run(api, admin_key, f"/v1/rule-runs/{far['id']}", lambda b: b["status"] == "cancelled")
            assert [a["status"] for a in gone["actions"]] == ["cancelled"] and gone["reason"].endswith("; cancelled")
        assert receiver.calls("^/never$") == []
        await replay_and_keep(client, steady["wait_workflow_id"], "wait")
        audit = (await api.get("/v1/audit?action=rule_run.cancelled", headers=h)).json()["items"]
        assert [e["resource"] for e in audit] == [f"rule_run/{far['id']}"]


async def _viewer(hub: Hub) -> str:
    from hub.auth import create_key

    async with hub.db.session() as session:
        return await create_key(session, "acme", "viewer")


async def _click(api: httpx.AsyncClient, hub: Hub, connection: str, button: dict, user: str) -> None:
    """A Slack interactivity delivery: ``user`` clicked ``button`` (signed with the connection's secret)."""
    click = {"type": "block_actions", "trigger_id": f"trig-{uuid.uuid4().hex}", "user": {"id": user, "username": user},
             "container": {"channel_id": "C1", "message_ts": "1.2"},
             "actions": [{"action_id": button["action_id"], "block_id": "fulqrun_approval", "value": button["value"],
                          "type": "button"}]}  # fmt: skip
    body = urlencode({"payload": json.dumps(click)}).encode()
    posted = await post_signed(api, hub, "slack", connection, body, "application/x-www-form-urlencoded")
    assert posted.status_code == 200, posted.text
    await Relay(hub).drain()


async def test_approvals_post_buttons_count_only_approvers_and_time_out(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    async with AsyncExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        slack = stack.enter_context(SlackFake(tokens=(SLACK_TOKEN,)))
        url = receiver.url
        after = [
            {"when": "steps.ok.output.approved", "http.post": {"url": f"{url}/approved", "json": {"by": "{{ steps.ok.output.by }}"}}},
            {"when": "!steps.ok.output.approved", "http.post": {"url": f"{url}/refused", "json": {
                "timed_out": "{{ steps.ok.output.timed_out }}", "by": "{{ steps.ok.output.by }}"}}},
        ]  # fmt: skip
        await apply(
            hub, OPEN_PIPELINE,
            rule("discount", "opportunity.created", when="opp.name != 'Slow'", do=[
                {"id": "ok", "approval": {"channel": "#approvals", "approvers": ["U_BOSS"], "timeout": "2m",
                                          "text": "Discount for {{ opp.name }}?"}}, *after]),
            rule("discount-slow", "opportunity.created", when="opp.name == 'Slow'", do=[
                {"id": "ok", "approval": {"channel": "#approvals", "approvers": ["U_BOSS"], "timeout": "3s"}}, *after]),
        )  # fmt: skip
        connection = await connect(hub, "slack", "oauth2_code_pkce", {"base_url": slack.url + "/api"}, SLACK_TOKEN)
        async with hub.db.session() as session:
            await put_secret(session, hub.vault, "acme", secret_owner(connection), "webhook_secrets", SECRET)
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        for oid, name in (("a1", "Globex"), ("a2", "Slow")):
            body = {"name": name, "branch": "emea", "owner_role": "ae", "amount": 10.0}
            assert (await api.put(f"/v1/opportunities/{oid}", json=body, headers=h)).status_code == 200
        page = await until_run(api, admin_key, "/v1/rule-runs?rule=discount&status=waiting", lambda b: b["items"])
        [waiting] = page["items"]
        assert waiting["actions"][0]["name"] == "approval" and waiting["wait_until"]
        for _ in range(300):  # the run's RuleRunWorkflow posts the buttons
            posted = [m for m in slack.messages if m["text"] == "Discount for Globex?"]
            if posted:
                break
            await asyncio.sleep(0.1)
        [message] = posted
        approve = next(b for b in message["blocks"] if b["type"] == "actions")["elements"][0]
        assert json.loads(approve["value"]) == {"opportunity_id": "a1", "decision": "approve",
                                                "request": waiting["wait_workflow_id"] + "#0"}
        await _click(api, hub, connection, approve, "U_INTERN")  # not an approver: does not count
        other_org = await make_connection(hub, "slack", org="other")
        await _click(api, hub, other_org, approve, "U_BOSS")  # another org's Slack: does not count
        await asyncio.sleep(1.0)
        assert (await api.get(f"/v1/rule-runs/{waiting['id']}", headers=h)).json()["status"] == "waiting"
        await _click(api, hub, connection, approve, "U_BOSS")
        done = await until_run(api, admin_key, f"/v1/rule-runs/{waiting['id']}", lambda b: b["status"] == "ok")
        slow = await until_run(api, admin_key, "/v1/rule-runs?rule=discount-slow",
                               lambda b: [r["status"] for r in b["items"] if r["opportunity_id"] == "a2"] == ["ok"])
        await replay_and_keep(client, done["wait_workflow_id"], "approval")

    assert [(a["name"], a["status"]) for a in done["actions"]] == [
        ("approval", "ok"), ("http.post", "ok"), ("http.post", "skipped")]
    output = done["actions"][0]["output"]
    assert (output["approved"], output["by"], output["timed_out"]) == (True, "U_BOSS", False)
    assert [c.json() for c in receiver.calls("^/approved$")] == [{"by": "U_BOSS"}]
    [timed_out] = [r for r in slow["items"] if r["opportunity_id"] == "a2"]
    output = timed_out["actions"][0]["output"]
    assert (output["approved"], output["by"], output["timed_out"]) == (False, None, True)
    assert [c.json() for c in receiver.calls("^/refused$")] == [{"timed_out": "True", "by": "None"}]
