"""Rules with steps (``rules.steps``): outputs of earlier steps in later ones, a step's own ``when``, and
``on_error: continue | stop | retry``, checked at apply time and run end to end on the real workflows."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import httpx
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.opportunity_types import OpportunityInput, PinnedPipeline, body_hash, workflow_id
from connectors.catalogue import import_action_modules
from hub.runtime import Hub
from hub.store.connections import secret_owner
from hub.store.opportunities import RuleRunRecord
from hub.store.secrets import put_secret
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from rules.engine import dry_run
from rules.loader import load_text
from rules.schema import json_schema
from tests.conftest import bearer
from tests.fakes.stripe_server import StripeFake
from tests.workflows.opportunity_kit import AiStandIn, apply, connect, main_worker, opportunity_body, rule
from tests.workflows.test_opportunity_replay import HISTORIES, HISTORY_VAULT_KEYS, RECORD, replayer
from tests.workflows.test_rule_matrix import OPEN_PIPELINE, Receiver
from worker import build_workers
from workflows.opportunity import OpportunityWorkflow

STRIPE_KEY = "sk_test_fake"



BAD_STEPS = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: bad-steps}
spec:
  on: opportunity.created
  do:
    - id: customer
      stripe.create_customer: {name: "{{ opp.name }}"}
    - id: invoice
      when: "steps.customer.output.replayed > 1"
      stripe.create_invoice:
        customer: "{{ steps.customer.output.custmer_id }}"
        lines: [{description: "Licences", amount: 100}]
    - slack.post_message: {channel: "#deals", text: "{{ steps.invoce.output.number }} {{ steps.later.status }}"}
      on_error: halt
    - id: later
      http.post: {url: "https://example.com/{{ steps.invoice.output.invoice_id }}"}
      attempts: 3
    - id: customer
      ai.next_action: {}
"""


def test_step_references_are_checked_with_line_and_column() -> None:
    import_action_modules()  # as the CLI and the API do: provider actions declare their outputs
    errors = [(e.line, e.column, e.message) for e in load_text(BAD_STEPS, "bad.yaml").errors]
    # the condition is type-checked against the declared output: replayed is a bool
    assert any((line, col) == (10, 13) and msg.startswith("CEL type error: No such overload") for line, col, msg in errors)
    assert (12, 19, "step 'customer' has no output field 'custmer_id' (its fields: customer_id, replayed)") in errors
    assert (14, 53, "unknown step 'invoce' in `steps.invoce` (earlier steps with an id: customer, invoice)") in errors
    assert (14, 53, "unknown step 'later' in `steps.later` (earlier steps with an id: customer, invoice)") in errors
    assert (15, 17, "on_error must be one of continue, stop, retry, got 'halt'") in errors
    assert (18, 17, "attempts applies only to on_error: retry") in errors
    assert (19, 11, "duplicate step id 'customer'") in errors
    assert not any(line == 17 for line, _, _ in errors), errors  # steps.invoice.output.invoice_id is declared


def test_plain_rules_plan_as_before_and_steps_plan_their_controls() -> None:
    plain = rule("plain", "opportunity.created", [{"opportunity.add_task": {"title": "{{ opp.name }}"}}])
    steps = rule("steps", "opportunity.created", [
        {"id": "task", "opportunity.add_task": {"title": "{{ opp.name }}"}},
        {"when": "opp.amount > 100.0", "opportunity.add_task": {"title": "big"}},
        {"when": "steps.task.status == 'ok'", "opportunity.add_task": {"title": "{{ steps.task.output.task }}"},
         "on_error": "retry", "attempts": 2},
    ])  # fmt: skip
    event = {"type": "opportunity.created", "opp": {"id": "o1", "name": "Globex", "amount": 10.0}}
    [a, b] = dry_run([plain, steps], event)
    assert a.fired and [(p.name, p.params, p.step) for p in a.actions] == [
        ("opportunity.add_task", {"title": "Globex"}, None)]
    assert b.fired and [p.params for p in b.actions] == [
        {"title": "Globex"}, {}, {"title": "{{ steps.task.output.task }}"}]
    first, second, third = (p.step for p in b.actions)
    assert first and (first["id"], first["deferred"], first["skipped"]) == ("task", False, None)
    assert second and second["skipped"] == "condition false: `opp.amount > 100.0`"
    assert third and (third["deferred"], third["on_error"], third["attempts"]) == (True, "retry", 2)


async def until_run(api: httpx.AsyncClient, key: str, path: str, check, timeout: float = 90) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await api.get(path, headers=bearer(key))).json()
        if check(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, json.dumps(body, indent=1)
        await asyncio.sleep(0.2)


async def test_steps_pass_outputs_skip_retry_and_stop_end_to_end(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    async with AsyncExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        stripe = stack.enter_context(StripeFake(tokens=(STRIPE_KEY,)))
        url = receiver.url
        await apply(
            hub, OPEN_PIPELINE,
            rule("won-to-invoice", "opportunity.created", [
                {"id": "customer", "stripe.create_customer": {"name": "{{ opp.name }}", "opportunity_id": "{{ opp.id }}"}},
                {"id": "invoice", "stripe.create_invoice": {
                    "customer": "{{ steps.customer.output.customer_id }}", "currency": "eur",
                    "lines": [{"description": "Licences", "amount": 100}]}},
                {"id": "flaky", "http.post": {"url": f"{url}/flaky", "json": {"invoice": "{{ steps.invoice.output.invoice_id }}"}},
                 "on_error": "retry", "attempts": 3},
                {"when": "steps.flaky.output.status == 200",
                 "opportunity.add_task": {"title": "Invoice {{ steps.invoice.output.number }}"}},
                {"when": "steps.flaky.status == 'failed'", "opportunity.add_task": {"title": "never"}},
                {"id": "broken", "http.post": {"url": f"{url}/broken"}, "on_error": "stop"},
                {"http.post": {"url": f"{url}/after"}},
            ]),
            rule("alert", "automation.failed", [{"http.post": {"url": f"{url}/alerts",
                                                               "json": {"index": "{{ event.index }}"}}}]),
        )  # fmt: skip
        stripe_id = await connect(hub, "stripe", "api_key", {"base_url": stripe.url}, STRIPE_KEY)
        async with hub.db.session() as session:
            await put_secret(session, hub.vault, "acme", secret_owner(stripe_id), "api_key", STRIPE_KEY)
        receiver.fail(400, path="^/flaky$", times=2)
        receiver.fail(400, path="^/broken$", times=1000)
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        body = {"name": "Globex", "branch": "emea", "owner_role": "ae", "amount": 10.0}
        assert (await api.put("/v1/opportunities/steps-1", json=body, headers=bearer(admin_key))).status_code == 200

        page = await until_run(api, admin_key, "/v1/rule-runs?rule=won-to-invoice", lambda b: b["items"])
        alerts = await until_run(api, admin_key, "/v1/rule-runs?rule=alert", lambda b: b["items"])
        await asyncio.sleep(1.0)  # nothing else would be alerted
        assert len(receiver.calls("^/alerts$")) == 1 and receiver.calls("^/alerts$")[0].json() == {"index": "5"}
        assert len(alerts["items"]) == 1

    [run] = page["items"]
    assert run["status"] == "failed" and run["reason"].endswith("; stopped at step broken"), run
    steps = run["actions"]
    assert [(s["step"], s["status"]) for s in steps] == [
        ("customer", "ok"), ("invoice", "ok"), ("flaky", "ok"), (None, "ok"), (None, "skipped"),
        ("broken", "failed"), (None, "skipped")]
    customer_id = steps[0]["output"]["customer_id"]
    assert steps[1]["params"]["customer"] == customer_id  # rendered from the first step's output
    invoice = stripe.objects["invoices"][steps[1]["output"]["invoice_id"]]
    assert invoice["customer"] == customer_id
    flaky = receiver.calls("^/flaky$")
    assert steps[2]["attempts"] == 3 and len(flaky) == 3
    assert {c.headers["idempotency-key"] for c in flaky} == {steps[2]["idempotency_key"]}  # one key for every run
    assert flaky[-1].json() == {"invoice": invoice["id"]}
    assert steps[3]["params"] == {"title": f"Invoice {invoice['number']}"}
    assert steps[4]["reason"] == "condition false: `steps.flaky.status == 'failed'`"
    assert steps[5]["attempts"] == 1 and "HttpClientError" in steps[5]["error"]
    assert steps[6]["reason"] == "not run: step broken failed (on_error: stop)"
    assert receiver.calls("^/after$") == []


SIGNED_PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "signed"},
    "spec": {"stages": [{"key": "open", "name": "Open", "color": "#6B7280", "probability": 0.1,
                         "documents": ["signed_contract"]},
                        {"key": "won", "name": "Won", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "open", "to": "won", "roles": ["automation"]}]},
}  # fmt: skip
KEPT_STEPS = "rules-steps-run*.json"


async def test_replay_steps_history_recorded_now(temporal_env: WorkflowEnvironment, hub: Hub, task_queue: str) -> None:
    """An OpportunityWorkflow running a rule with steps (an output used by a later step, a step's own ``when``,
    ``on_error: retry`` with its timer, a stopped run) replays; kept as ``tests/histories/rules-steps-run1.json``
    (``HUB_RECORD_HISTORIES=1``)."""
    client = await Client.connect(temporal_env.client.service_client.config.target_host, namespace="default",
                                  data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))
    await apply(hub, SIGNED_PIPELINE, rule("steps", "opportunity.created", [
        {"id": "field", "opportunity.set_field": {"field": "forecast_category", "value": "commit"}},
        {"when": "steps.field.output.field == 'forecast_category'",
         "opportunity.add_task": {"title": "set {{ steps.field.output.field }}"}},
        {"id": "move", "opportunity.transition": {"to": "won"}, "on_error": "retry", "attempts": 2},
        {"opportunity.add_task": {"title": "never"}},
    ]))  # fmt: skip
    oid = f"steps-{task_queue}"
    wid = workflow_id("acme", oid)
    opp = opportunity_body()
    async with main_worker(hub, client, task_queue, AiStandIn()):
        handle = await client.start_workflow(
            OpportunityWorkflow.run,
            OpportunityInput(org_id="acme", opportunity_id=oid, opp=opp, body_hash=body_hash(opp),
                             pipeline=PinnedPipeline(name="signed", version=1, spec=SIGNED_PIPELINE)),
            id=wid, task_queue=task_queue,
        )  # fmt: skip
        for _ in range(200):
            async with hub.db.session() as session:
                run = await session.get(RuleRunRecord, 1)
            if run is not None:
                break
            await asyncio.sleep(0.1)
        state = await handle.query(OpportunityWorkflow.state)
    assert run is not None and run.status == "failed" and run.reason.endswith("; stopped at step move")
    assert [(a["status"], a["attempts"]) for a in run.actions] == [("ok", 1), ("ok", 1), ("failed", 2), ("skipped", 1)]
    assert [t["title"] for t in state.opp["tasks"]] == ["set forecast_category"] and state.stage == "open"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if RECORD:
        doc = {"workflow_id": wid, "history": json.loads(history.to_json())}
        (HISTORIES / KEPT_STEPS.replace("*", "1")).write_text(json.dumps(doc, indent=1) + "\n")


async def test_replay_kept_steps_histories() -> None:
    files = sorted(HISTORIES.glob(KEPT_STEPS))
    assert files, f"no kept histories {KEPT_STEPS} in {HISTORIES}"
    for path in files:
        doc = json.loads(path.read_text())
        await replayer().replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))


def test_rule_schema_lists_step_keys_next_to_actions() -> None:
    items = json_schema("Rule")["$defs"]["RuleSpec"]["properties"]["do"]["items"]
    assert {"id", "when", "on_error", "attempts", "wait", "unless", "approval", "http.post"} <= set(items["properties"])
    assert items["properties"]["on_error"]["enum"] == ["continue", "stop", "retry"]
    assert items["properties"]["wait"]["properties"]["for"]["pattern"] == r"^\d+[smhd]$"


async def test_dry_run_shows_steps_and_waits(api: httpx.AsyncClient, admin_key: str) -> None:
    draft = rule("draft", "opportunity.created", [
        {"id": "task", "opportunity.add_task": {"title": "{{ opp.name }}"}},
        {"wait": {"for": "1d"}, "unless": "documents.signed_contract"},
        {"when": "steps.task.status == 'ok'", "http.post": {"url": "https://example.com/{{ steps.task.output.task }}"}},
    ])  # fmt: skip
    event = {"type": "opportunity.created", "opp": {"id": "o1", "name": "Globex"}}
    report = (await api.post("/v1/rules:test", json={"event": event, "rules": [draft]}, headers=bearer(admin_key)))
    assert report.status_code == 200, report.text
    task, wait, post = report.json()["outcomes"][0]["actions"]
    assert (task["params"], task["problem"], task["step"]["id"]) == ({"title": "Globex"}, None, "task")
    assert (wait["name"], wait["runs_for"], wait["problem"], wait["params"]) == ("wait", "org", None, {"for": "1d"})
    assert post["step"]["deferred"] and post["params"]["url"] == "https://example.com/{{ steps.task.output.task }}"
