"""The resources API: pipelines and rules as JSON or YAML, versions, validation, dry-run, schemas, roles."""

from __future__ import annotations

import httpx
import pytest

from hub.auth import create_key
from hub.runtime import Hub
from rules.defaults import PEAK_PIPELINE
from tests.conftest import bearer

YAML = {"Content-Type": "application/yaml"}

RULE_YAML = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: big-deal-to-acquire, branches: ["*"], roles: ["*"]}
spec:
  on: stage.entered
  stage: acquire
  when: "opp.amount >= 50000.0"
  do:
    - slack.post_message: {channel: "#deals", text: "{{ opp.name }} entered Acquire"}
    - ai.next_action: {}
"""


async def key_for(hub: Hub, org: str, role: str) -> dict[str, str]:
    async with hub.db.session() as session:
        return bearer(await create_key(session, org, role))


async def test_put_yaml_get_versions_and_noop(api: httpx.AsyncClient, admin_key: str) -> None:
    h = {**bearer(admin_key), **YAML}
    created = await api.put("/v1/pipelines/peak", content=PEAK_PIPELINE.read_text(), headers=h)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["outcome"] == "created" and body["resource"]["version"] == 1
    assert body["resource"]["document"]["metadata"]["org"] == "acme"
    again = await api.put("/v1/pipelines/peak", content=PEAK_PIPELINE.read_text(), headers=h)
    assert (again.status_code, again.json()["outcome"], again.json()["resource"]["version"]) == (
        200,
        "unchanged",
        1,
    )
    changed = PEAK_PIPELINE.read_text().replace("probability: 0.30", "probability: 0.35")
    r = await api.put("/v1/pipelines/peak", content=changed, headers=h)
    assert (r.json()["outcome"], r.json()["resource"]["version"]) == ("changed", 2)
    got = await api.get("/v1/pipelines/peak", headers=bearer(admin_key))
    assert got.json()["version"] == 2
    old = await api.get("/v1/pipelines/peak?version=1", headers=bearer(admin_key))
    assert old.json()["document"]["spec"]["stages"][1]["probability"] == 0.3
    as_yaml = await api.get("/v1/pipelines/peak", headers={**bearer(admin_key), "Accept": "application/yaml"})
    assert (
        as_yaml.headers["content-type"].startswith("application/yaml") and "probability: 0.35" in as_yaml.text
    )
    versions = await api.get("/v1/pipelines/peak/versions?limit=1", headers=bearer(admin_key))
    assert [v["version"] for v in versions.json()["items"]] == [1] and versions.json()["next_cursor"] == "1"
    rest = await api.get("/v1/pipelines/peak/versions?cursor=1", headers=bearer(admin_key))
    assert [v["version"] for v in rest.json()["items"]] == [2] and rest.json()["next_cursor"] is None


async def test_put_json_delete_tombstone_and_list(api: httpx.AsyncClient, admin_key: str) -> None:
    h = bearer(admin_key)
    for name in ("a-rule", "b-rule", "c-rule"):
        doc = {
            "apiVersion": "fulqrun.io/v1",
            "kind": "Rule",
            "metadata": {"name": name},
            "spec": {"on": "lead.created", "do": [{"ai.score_lead": {}}]},
        }
        assert (await api.put(f"/v1/rules/{name}", json=doc, headers=h)).status_code == 201
    page = (await api.get("/v1/rules?limit=2", headers=h)).json()
    assert [i["name"] for i in page["items"]] == ["a-rule", "b-rule"]
    page2 = (await api.get(f"/v1/rules?limit=2&cursor={page['next_cursor']}", headers=h)).json()
    assert [i["name"] for i in page2["items"]] == ["c-rule"] and page2["next_cursor"] is None
    deleted = await api.delete("/v1/rules/b-rule", headers=h)
    assert deleted.status_code == 200 and deleted.json()["deleted"] and deleted.json()["version"] == 2
    assert (await api.get("/v1/rules/b-rule", headers=h)).status_code == 404
    assert (await api.delete("/v1/rules/b-rule", headers=h)).status_code == 404
    assert [i["name"] for i in (await api.get("/v1/rules", headers=h)).json()["items"]] == [
        "a-rule",
        "c-rule",
    ]
    history = (await api.get("/v1/rules/b-rule/versions", headers=h)).json()["items"]
    assert [(v["version"], v["deleted"]) for v in history] == [(1, False), (2, True)]


async def test_disable_and_enable(api: httpx.AsyncClient, admin_key: str) -> None:
    h = bearer(admin_key)
    await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**h, **YAML})
    off = await api.post("/v1/rules/big-deal-to-acquire:disable", headers=h)
    assert off.json()["outcome"] == "changed" and off.json()["resource"]["enabled"] is False
    assert (await api.post("/v1/rules/big-deal-to-acquire:disable", headers=h)).json()[
        "outcome"
    ] == "unchanged"
    event = {"event": {"type": "stage.entered", "stage": "acquire", "opp": {"name": "D", "amount": 90000.0}}}
    [outcome] = (await api.post("/v1/rules:test", json=event, headers=h)).json()["outcomes"] or [None]
    assert outcome is None  # disabled rules are not current
    assert (await api.post("/v1/rules/big-deal-to-acquire:enable", headers=h)).json()["resource"][
        "version"
    ] == 3


async def test_invalid_yaml_gives_line_column_and_field(api: httpx.AsyncClient, admin_key: str) -> None:
    bad = RULE_YAML.replace("ai.next_action: {}", "ai.next_actoin: {}").replace('"#deals"', "5")
    r = await api.put("/v1/rules/big-deal-to-acquire", content=bad, headers={**bearer(admin_key), **YAML})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    errors = {(e["line"], e["field"]): e["message"] for e in r.json()["errors"]}
    assert errors[(10, 'spec.do[1]["ai.next_actoin"]')].startswith("unknown action 'ai.next_actoin'")
    assert (await api.get("/v1/rules/big-deal-to-acquire", headers=bearer(admin_key))).status_code == 404


async def test_name_and_kind_must_match_the_url(api: httpx.AsyncClient, admin_key: str) -> None:
    h = {**bearer(admin_key), **YAML}
    r = await api.put("/v1/rules/other-name", content=RULE_YAML, headers=h)
    assert r.status_code == 422 and "does not match the URL name" in r.json()["detail"]
    r = await api.put("/v1/pipelines/big-deal-to-acquire", content=RULE_YAML, headers=h)
    assert r.status_code == 422 and "kind must be 'Pipeline'" in r.json()["detail"]
    r = await api.put(
        "/v1/rules/x", content=b"<xml/>", headers={**bearer(admin_key), "Content-Type": "text/xml"}
    )
    assert r.status_code == 415


async def test_scope_tie_is_409(api: httpx.AsyncClient, admin_key: str) -> None:
    h = {**bearer(admin_key), **YAML}
    text = PEAK_PIPELINE.read_text()
    assert (await api.put("/v1/pipelines/peak", content=text, headers=h)).status_code == 201
    twin = text.replace("name: peak\n", "name: peak-copy\n")
    r = await api.put("/v1/pipelines/peak-copy", content=twin, headers=h)
    assert r.status_code == 409 and "ties with pipeline 'peak'" in r.json()["detail"]


async def test_roles_and_org_isolation(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**bearer(admin_key), **YAML})
    viewer = await key_for(hub, "acme", "viewer")
    assert (await api.get("/v1/rules/big-deal-to-acquire", headers=viewer)).status_code == 200
    assert (await api.get("/v1/rules", headers=viewer)).status_code == 200
    assert (
        await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**viewer, **YAML})
    ).status_code == 403
    assert (await api.delete("/v1/rules/big-deal-to-acquire", headers=viewer)).status_code == 403
    crm = await key_for(hub, "acme", "crm")
    assert (
        await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**crm, **YAML})
    ).status_code == 403
    stranger = await key_for(hub, "globex", "admin")
    assert (await api.get("/v1/rules/big-deal-to-acquire", headers=stranger)).status_code == 404
    assert (await api.get("/v1/rules/big-deal-to-acquire/versions", headers=stranger)).status_code == 404
    assert (await api.delete("/v1/rules/big-deal-to-acquire", headers=stranger)).status_code == 404
    assert (await api.get("/v1/rules", headers=stranger)).json()["items"] == []
    test = await api.post(
        "/v1/rules/big-deal-to-acquire:test", json={"event": {"type": "x"}}, headers=stranger
    )
    assert test.status_code == 404
    assert (await api.get("/v1/rules")).status_code == 401


async def test_validate_reports_every_error_and_applies_nothing(
    api: httpx.AsyncClient, admin_key: str
) -> None:
    body = (
        RULE_YAML
        + "---\n"
        + RULE_YAML.replace("big-deal-to-acquire", "second").replace(
            'when: "opp.amount >= 50000.0"', 'when: "opp.amount >= "'
        )
    )
    r = await api.post("/v1/resources:validate", content=body, headers={**bearer(admin_key), **YAML})
    report = r.json()
    assert r.status_code == 200 and report["valid"] is False
    assert report["resources"] == [{"kind": "Rule", "name": "big-deal-to-acquire", "outcome": "created"}]
    [error] = report["errors"]
    assert (error["line"], error["field"], error["document"]) == (18, "spec.when", 1)
    assert error["message"].startswith("CEL syntax error")
    assert (await api.get("/v1/rules", headers=bearer(admin_key))).json()["items"] == []
    ok = await api.post(
        "/v1/resources:validate", content=PEAK_PIPELINE.read_text(), headers={**bearer(admin_key), **YAML}
    )
    assert ok.json() == {
        "valid": True,
        "resources": [{"kind": "Pipeline", "name": "peak", "outcome": "created"}],
        "errors": [],
    }


async def test_dry_run_stored_and_draft_rules(api: httpx.AsyncClient, admin_key: str) -> None:
    h = bearer(admin_key)
    await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**h, **YAML})
    event = {"type": "stage.entered", "stage": "acquire", "opp": {"name": "Globex", "amount": 80000.0}}
    report = (await api.post("/v1/rules/big-deal-to-acquire:test", json={"event": event}, headers=h)).json()
    assert report["fired"] == 1 and report["event"]["org"] == "acme"
    assert report["outcomes"][0]["actions"] == [
        {"name": "slack.post_message", "params": {"channel": "#deals", "text": "Globex entered Acquire"},
         "runs_for": "org", "problem": None, "step": None},
        {"name": "ai.next_action", "params": {}, "runs_for": "opportunity", "problem": None, "step": None},
    ]
    # the dry-run says what the run would do: an opportunity action for an event naming none would fail
    draft_set = {"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": "pay"},
                 "spec": {"on": "payment.received", "do": [{"opportunity.set_field": {"field": "paid", "value": True}}]}}
    org_event = {"type": "payment.received", "event": {"invoice": "in_1"}}
    report = (await api.post("/v1/rules:test", json={"event": org_event, "rules": [draft_set]}, headers=h)).json()
    assert report["outcomes"][0]["actions"] == [
        {"name": "opportunity.set_field", "params": {"field": "paid", "value": True}, "runs_for": "opportunity",
         "problem": "opportunity.set_field needs an opportunity; this payment.received event names none", "step": None}
    ]
    small = {**event, "opp": {"name": "Tiny", "amount": 10.0}}
    report = (await api.post("/v1/rules:test", json={"event": small}, headers=h)).json()
    assert (
        report["fired"] == 0 and report["outcomes"][0]["reason"] == "condition false: `opp.amount >= 50000.0`"
    )
    draft = {
        "apiVersion": "fulqrun.io/v1",
        "kind": "Rule",
        "metadata": {"name": "draft"},
        "spec": {"on": "stage.entered", "do": [{"opportunity.add_task": {"title": "Hi {{ opp.name }}"}}]},
    }
    report = (await api.post("/v1/rules:test", json={"event": small, "rules": [draft]}, headers=h)).json()
    assert [(o["rule"], o["fired"], o["actions"][0]["params"]) for o in report["outcomes"]] == [
        ("draft", True, {"title": "Hi Tiny"})
    ]
    bad = await api.post("/v1/rules:test", json={"event": {"stage": "x"}}, headers=h)
    assert bad.status_code == 422 and "event.type" in bad.json()["detail"]


async def test_schemas_are_served(api: httpx.AsyncClient) -> None:
    rule = await api.get("/v1/schemas/rule")
    assert rule.status_code == 200 and rule.headers["content-type"] == "application/schema+json"
    schema = rule.json()
    assert "stage.entered" in schema["$defs"]["RuleSpec"]["properties"]["on"]["enum"]
    assert "http.post" in schema["$defs"]["RuleSpec"]["properties"]["do"]["items"]["properties"]
    assert (await api.get("/v1/schemas/Pipeline")).json()["title"] == "Pipeline"
    assert (await api.get("/v1/schemas/widget")).status_code == 404


@pytest.mark.parametrize("size", [5 * 1024 * 1024])
async def test_five_megabyte_document_is_refused(api: httpx.AsyncClient, admin_key: str, size: int) -> None:
    big = RULE_YAML + "# " + "x" * size + "\n"
    r = await api.put("/v1/rules/big-deal-to-acquire", content=big, headers={**bearer(admin_key), **YAML})
    assert r.status_code == 413


async def test_dry_run_against_a_recorded_webhook_event(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    """The recorded event's first domain event, in the opportunity it names (its projection) or for the org."""
    from hub.store.opportunities import OpportunityRecord
    from tests.console.kit import dead_event

    h = bearer(admin_key)
    rule = {"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": "paid"},
            "spec": {"on": "payment.received", "when": "opp.amount > 100.0",
                     "do": [{"opportunity.add_task": {"title": "Thank {{ opp.name }}"}}]}}  # fmt: skip
    assert (await api.put("/v1/rules/paid", json=rule, headers=h)).status_code == 201
    invoice = (b'{"id": "evt_p", "type": "invoice.paid", "data": {"object": {"object": "invoice", "id": "in_9", '
               b'"amount_paid": 700, "metadata": {"opportunity_id": "o-paid"}}}}')
    recorded = await dead_event(hub, body=invoice)
    async with hub.db.session() as session:
        session.add(OpportunityRecord(org_id="acme", id="o-paid", workflow_id="opportunity/acme/o-paid",
                                      pipeline_name="peak", pipeline_version=1, stage="acquire", body_hash="h",
                                      revision=1, state={"opp": {"name": "Globex", "amount": 900.0, "branch": "emea"}},
                                      branch="emea"))  # fmt: skip
    report = (await api.post("/v1/rules/paid:test", json={"webhook_event": recorded}, headers=h)).json()
    assert report["fired"] == 1, report
    assert report["outcomes"][0]["actions"] == [{"name": "opportunity.add_task", "params": {"title": "Thank Globex"},
                                                 "runs_for": "opportunity", "problem": None, "step": None}]
    event = report["event"]
    assert (event["type"], event["opp"]["id"], event["opp"]["stage"], event["branch"]) == (
        "payment.received", "o-paid", "acquire", "emea")
    assert event["event"]["data"]["amount_paid"] == 700 and event["event"]["source"]["event_id"] == recorded

    ignored = await dead_event(hub, event_type="invoice.payment_succeeded",
                               body=b'{"id": "evt_s", "type": "invoice.payment_succeeded"}')
    answer = await api.post("/v1/rules:test", json={"webhook_event": ignored}, headers=h)
    assert answer.status_code == 422 and "raises no domain event" in answer.json()["detail"]
    assert (await api.post("/v1/rules:test", json={"webhook_event": "whe_nope"}, headers=h)).status_code == 404
    both = await api.post("/v1/rules:test", json={"webhook_event": recorded, "event": {"type": "x"}}, headers=h)
    assert both.status_code == 422 and both.json()["detail"] == "give either event or webhook_event"
