"""Triggers end to end from real inputs: DocuSign Connect messages (signed with the connection's HMAC key) raise
``contract.sent``, ``contract.declined`` (declined and voided) and ``contract.signed``, whose rules add tasks and
move the opportunity (``opportunity.transition``, refused with its reasons when the pipeline says no); a rule on
``schedule`` has a Temporal Schedule that follows its versions."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.service import RPCError

from hub.runtime import Hub
from tests.conftest import bearer, shared_data
from tests.webhooks.conftest import make_connection, post_signed
from tests.webhooks.test_events import declined_xml
from tests.workflows.opportunity_kit import apply, rule
from webhooks.relay import Relay
from worker import build_workers

DEALS = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "deals"},
    "spec": {"stages": [{"key": "acquire", "name": "Acquire", "color": "#6B7280", "probability": 0.6,
                         "documents": ["signed_contract"]},
                        {"key": "keep", "name": "Keep", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "acquire", "to": "keep", "when": "documents.signed_contract",
                              "message": "Keep needs the signed contract.", "roles": ["ae", "automation"]}]},
}  # fmt: skip
OPPORTUNITY_FIELD = b"<CustomField><Name>opportunity_id</Name><Value>d1</Value></CustomField>"


def with_opportunity(xml: bytes) -> bytes:
    """A DocuSign Connect message whose envelope carries the custom field ``opportunity_id = d1``."""
    return xml.replace(b"<CustomFields>\n         <CustomField>", b"<CustomFields>" + OPPORTUNITY_FIELD + b"<CustomField>", 1)


async def settled(api: httpx.AsyncClient, key: str, check, timeout: float = 60) -> dict:
    """The opportunity once ``check(view)`` holds and no effect is pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view = (await api.get("/v1/opportunities/d1", headers=bearer(key))).json()
        if view.get("pending_effects") == 0 and check(view):
            return view
        assert asyncio.get_running_loop().time() < deadline, (view["opportunity"].get("tasks"), [(r["rule"], r["fired"], r["reason"], r["actions"]) for r in view["rule_runs"]])
        await asyncio.sleep(0.1)


async def test_docusign_envelopes_raise_contract_triggers_and_a_rule_moves_the_deal(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    await apply(
        hub, DEALS,
        rule("on-sent", "contract.sent", [{"opportunity.add_task": {"title": "Chase {{ event.data.subject }}"}},
                                          {"opportunity.transition": {"to": "keep", "reason": "too early"}}]),
        rule("on-declined", "contract.declined",
             [{"opportunity.add_task": {"title": "Contract {{ event.data.status }}: {{ event.data.reason }}"}}]),
        rule("on-signed", "contract.signed", [{"opportunity.transition": {"to": "keep", "reason": "signed"}}]),
    )  # fmt: skip
    docusign = await make_connection(hub, "docusign", secrets="connect-hmac-key")
    sent = with_opportunity(shared_data("webhooks", "docusign", "envelope-sent.legacy_xml.xml").read_bytes())
    completed = with_opportunity(shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml").read_bytes())
    async with AsyncExitStack() as stack:
        for worker in build_workers(hub, client):
            await stack.enter_async_context(worker)
        body = {"name": "Initech", "branch": "emea", "owner_role": "ae", "amount": 9000.0, "stage": "acquire"}
        assert (await api.put("/v1/opportunities/d1", json=body, headers=h)).status_code == 200
        for xml in (sent, with_opportunity(declined_xml("Declined", "Price too high")),
                    with_opportunity(declined_xml("Voided", "Replaced by v2"))):
            posted = await post_signed(api, hub, "docusign", docusign, xml, "text/xml")
            assert posted.status_code == 200, posted.text
            await Relay(hub).drain()
        view = await settled(api, admin_key, lambda v: len(v["opportunity"].get("tasks", [])) == 3)
        assert [t["title"] for t in view["opportunity"]["tasks"]] == [
            "Chase Please sign this document", "Contract declined: Price too high", "Contract voided: Replaced by v2"]
        early = next(r for r in view["rule_runs"] if r["rule"] == "on-sent")
        refused = early["actions"][1]
        assert not refused["ok"] and refused["error"].startswith("TransitionRefused")
        assert "document_missing" in refused["error"] and view["stage"] == "acquire"

        posted = await post_signed(api, hub, "docusign", docusign, completed, "text/xml")
        assert posted.status_code == 200
        await Relay(hub).drain()
        view = await settled(api, admin_key, lambda v: v["stage"] == "keep")
    last = view["history"][-1]
    assert (last["from_stage"], last["to_stage"], last["actor"], last["reason"]) == (
        "acquire", "keep", {"id": "automation", "role": "automation"}, "signed")
    assert view["stages"][0]["documents"] == {"signed_contract": True}


async def test_a_schedule_rule_has_a_temporal_schedule_that_follows_its_versions(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    h = bearer(admin_key)
    handle = client.get_schedule_handle("rule/acme/weekly")
    doc = rule("weekly", "schedule", [{"http.post": {"url": "https://example.com/hook"}}])
    doc["spec"]["schedule"] = "0 9 * * 1"
    assert (await api.put("/v1/rules/weekly", json=doc, headers=h)).status_code == 201
    described = await handle.describe()
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "ScheduledRuleWorkflow"
    assert action.priority.fairness_key == "org:acme"  # its runs take the org's turn on the shared queue
    assert described.schedule.spec.cron_expressions == ["0 9 * * 1"] or described.schedule.spec.calendars
    assert "v1" in described.schedule.state.note

    doc["spec"]["schedule"] = "@every 15m"
    assert (await api.put("/v1/rules/weekly", json=doc, headers=h)).status_code == 200
    described = await handle.describe()
    assert [i.every for i in described.schedule.spec.intervals] == [timedelta(minutes=15)]
    assert "v2" in described.schedule.state.note

    assert (await api.post("/v1/rules/weekly:disable", headers=h)).status_code == 200
    try:
        await handle.describe()
        raise AssertionError("a disabled rule keeps no schedule")
    except RPCError:
        pass
    assert (await api.post("/v1/rules/weekly:enable", headers=h)).status_code == 200
    assert "v4" in (await handle.describe()).schedule.state.note
    assert (await api.delete("/v1/rules/weekly", headers=h)).status_code == 200
    try:
        await handle.describe()
        raise AssertionError("a deleted rule keeps no schedule")
    except RPCError:
        pass
