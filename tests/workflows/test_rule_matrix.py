"""Every trigger × every action, through the real workflows: what validation accepts runs, and what it refuses
could not have run.

One rule per trigger does every built-in action (and ``generic_oauth2.request``, standing for the provider actions,
which all run the same way: ``connector.run_action`` on the provider's queue, for any event) that the registry
says can run for what the trigger's events name. The triggers are raised from real inputs: the CRM API
(opportunity, lead), signed ``generic`` webhooks with and without an opportunity, a rule's Temporal Schedule, the
opportunity's durable timers (its close date near, then idle); ``automation.failed`` by the failures that follow. Every action of every run must have run — or, where the event
named no opportunity, have failed saying so, exactly as the dry-run predicts. A test day lasts one second
(``HUB_DAY_SECONDS``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import defaultdict
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from temporalio.client import Client

from hub.runtime import Hub
from hub.settings import Settings
from hub.store.connections import secret_owner
from hub.store.opportunities import RuleRunRecord
from hub.store.secrets import put_secret
from rules import actions
from rules.model import DATE_TRIGGERS, TRIGGER_SUBJECTS, TRIGGERS, RuleSpec
from rules.validate import check_rule
from tests.conftest import bearer
from tests.fakes.server import FakeServer
from tests.webhooks.conftest import post_signed
from tests.workflows.opportunity_kit import apply, connect
from webhooks.relay import Relay
from worker import build_workers
from workflows.rule_runner import BUILTIN_NAMESPACES

OPEN_PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "open"},
    "spec": {"stages": [{"key": "open", "name": "Open", "color": "#6B7280", "probability": 0.1},
                        {"key": "won", "name": "Won", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "open", "to": "won", "roles": ["automation"]}]},
}  # fmt: skip
WEBHOOK_TRIGGERS = [t for t in TRIGGERS if TRIGGER_SUBJECTS[t] == frozenset({"opportunity", "org"})
                    and t != "automation.failed"]


class Receiver(FakeServer):
    """Where ``http.post`` actions go: any path takes a POST."""

    def __init__(self) -> None:
        super().__init__(tokens=())

    def routes(self) -> list[BaseRoute]:
        async def hook(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        return [Route("/{path:path}", hook, methods=["POST"])]


def params(receiver: Receiver) -> dict[str, dict]:
    """Params of every action under test; a new built-in without an entry here fails the test."""
    return {
        "opportunity.set_field": {"field": "flags.touched", "value": True},
        "opportunity.add_task": {"title": "Follow up"},
        "opportunity.transition": {"to": "won", "reason": "rule"},
        "ai.next_action": {},
        "ai.deal_risk": {},
        "ai.score_lead": {},
        "http.post": {"url": f"{receiver.url}/hook", "json": {"rule": "matrix"}},
        "generic_oauth2.request": {"method": "POST", "path": "/hook", "json": {"rule": "matrix"}},
    }


def name_of(trigger: str) -> str:
    return trigger.replace(".", "-").replace("_", "-")


def trigger_params(trigger: str) -> dict:
    """What a trigger needs besides ``on``: a schedule, or the days of a relative-date trigger (one test day)."""
    if trigger == "schedule":
        return {"schedule": "@every 1m"}
    return {DATE_TRIGGERS[trigger]: 1} if trigger in DATE_TRIGGERS else {}


def matrix_rules(all_params: dict[str, dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """One rule per trigger with every action runnable for it (the transition last); and the refused pairs."""
    docs, refused = [], []
    for trigger in TRIGGERS:
        runnable = [a for a in all_params if actions.get_action(a).runs_for(TRIGGER_SUBJECTS[trigger])]
        runnable.sort(key=lambda a: a == "opportunity.transition")
        refused += [(trigger, a) for a in all_params if a not in runnable]
        spec: dict = {"on": trigger, "do": [{a: all_params[a]} for a in runnable]}
        spec.update(trigger_params(trigger))
        docs.append({"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": name_of(trigger)},
                     "spec": spec})
    return docs, refused


@pytest.fixture
def settings(tmp_path: Path, vault_keys: str, task_queue: str) -> Settings:
    """The test settings, with the loopback receiver of ``http.post`` allowed, and a day of one second for the
    relative-date triggers (``days_before: 1``: a second before the close date; ``days: 1``: a second idle)."""
    return Settings(data_dir=tmp_path / "data", vault_keys=vault_keys, task_queue=task_queue,
                    http_allowlist=["127.0.0.1/32"], day_seconds=1)


async def runs(hub: Hub) -> list[RuleRunRecord]:
    async with hub.db.session() as session:
        return list((await session.scalars(select(RuleRunRecord).order_by(RuleRunRecord.id))).all())


def test_every_builtin_action_is_under_test() -> None:
    builtins = {a for a in actions.known_actions() if a.split(".")[0] in BUILTIN_NAMESPACES}
    with Receiver() as receiver:
        assert builtins <= set(params(receiver))


def test_refused_pairs_are_refused_and_accepted_pairs_accepted() -> None:
    with Receiver() as receiver:
        all_params = params(receiver)
    docs, refused = matrix_rules(all_params)
    assert ("lead.created", "opportunity.set_field") in refused and ("schedule", "ai.next_action") in refused
    for doc in docs:
        assert check_rule(RuleSpec.model_validate(doc["spec"])) == [], doc
    for trigger, action in refused:
        spec = {"on": trigger, "do": [{action: all_params[action]}], **trigger_params(trigger)}
        [issue] = check_rule(RuleSpec.model_validate(spec))
        assert f"{action} needs" in issue.message and issue.path == ("spec", "do", 0, action)


async def test_every_trigger_runs_every_action_it_accepts(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    async with AsyncExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        all_params = params(receiver)
        docs, _ = matrix_rules(all_params)
        await apply(hub, OPEN_PIPELINE)
        for doc in docs:  # through the API: the schedule rule gets its Temporal Schedule
            put = await api.put(f"/v1/rules/{doc['metadata']['name']}", json=doc, headers=bearer(admin_key))
            assert put.status_code == 201, put.text
        generic = await connect(hub, "generic_oauth2", "oauth2_code_pkce", {"base_url": receiver.url}, "token")
        async with hub.db.session() as session:  # the same connection posts the webhooks
            await put_secret(session, hub.vault, "acme", secret_owner(generic), "webhook_secrets",
                             "whsec_" + base64.b64encode(b"k" * 24).decode())
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        schedule = client.get_schedule_handle("rule/acme/schedule")
        stack.push_async_callback(schedule.delete)

        h = bearer(admin_key)
        close = datetime.now(UTC) + timedelta(seconds=20)  # close_date_approaching fires a test day before
        body = {"name": "Matrix deal", "branch": "emea", "owner_role": "ae", "amount": 5000.0,
                "close_date": close.isoformat()}
        assert (await api.put("/v1/opportunities/m1", json=body, headers=h)).status_code == 200
        assert (await api.put("/v1/opportunities/m1", json={**body, "amount": 6000.0}, headers=h)).status_code == 200
        assert (await api.put("/v1/leads/L-m", json={"email": "x@initech.example", "company": "Initech"},
                              headers=h)).status_code == 200
        for trigger in [*WEBHOOK_TRIGGERS, "connection.failed"]:
            for opp in ("m1", None):
                data = {"kind": trigger, **({"opportunity_id": opp} if opp else {})}
                event = json.dumps({"id": f"evt-{uuid.uuid4().hex}", "type": trigger, "data": data}).encode()
                posted = await post_signed(api, hub, "generic_oauth2", generic, event, "application/json")
                assert posted.status_code == 200, posted.text
        await Relay(hub).drain()
        await schedule.trigger()

        wanted = {(t, "opportunity") for t in TRIGGER_SUBJECTS if "opportunity" in TRIGGER_SUBJECTS[t]}
        wanted |= {(t, "org") for t in [*WEBHOOK_TRIGGERS, "connection.failed", "schedule", "automation.failed"]}
        wanted |= {("lead.created", "lead")}

        def kind(run: RuleRunRecord) -> str:
            if run.subject.startswith("opportunity/"):
                return "opportunity"
            return "lead" if run.trigger == "lead.created" else "org"

        missing = set(wanted)
        for _ in range(600):
            missing = wanted - {(r.trigger, kind(r)) for r in await runs(hub) if r.fired}
            if not missing:
                break
            await asyncio.sleep(0.2)
        assert not missing, (missing, [(r.trigger, r.reason) for r in await runs(hub) if not r.fired])
        await asyncio.sleep(1.0)  # the automation.failed runs of the last failures

    ran: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in await runs(hub):
        assert run.fired, (run.rule, run.reason)
        where = kind(run)
        names = [a["name"] for a in run.actions]
        assert names == [next(iter(d)) for d in docs[TRIGGERS.index(run.trigger)]["spec"]["do"]], run.rule
        for outcome in run.actions:
            name, error = outcome["name"], outcome["error"]
            subjects = {"opportunity": {"opp": {"id": "m1"}}, "lead": {"lead": {"id": "L-m"}}}.get(where, {})
            _, problem = actions.placement(name, {"type": run.trigger, **subjects})
            if problem is None:
                refused = name == "opportunity.transition" and (error or "").startswith("TransitionRefused")
                assert outcome["ok"] or refused, (run.trigger, where, outcome)
                ran[(run.trigger, name)].add(where)
            else:  # the event named no opportunity: the run says so, as the dry-run does
                assert not outcome["ok"] and problem in error, (run.trigger, where, outcome)
            assert outcome["params"] == json.loads(json.dumps(outcome["params"])) and outcome["duration_ms"] >= 0
    accepted = {(t, a) for t in TRIGGERS for a in all_params
                if actions.get_action(a).runs_for(TRIGGER_SUBJECTS[t])}
    assert accepted == set(ran), accepted ^ set(ran)
    moved = (await api.get("/v1/opportunities/m1", headers=h)).json()
    assert moved["stage"] == "won" and moved["history"][-1]["actor"] == {"id": "automation", "role": "automation"}
    assert len(receiver.calls("/hook", "POST")) >= 2 * len(TRIGGERS)  # http.post and the provider action
