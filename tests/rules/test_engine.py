"""The rule engine: which rules fire for an event, which do not and why, rendered actions."""

from __future__ import annotations

import pytest

from rules.defaults import example_files
from rules.engine import PlannedAction, compile_rules
from rules.loader import load_path


def rule(name: str, **spec) -> dict:
    spec.setdefault("do", [{"ai.next_action": {}}])
    return {
        "apiVersion": "fulqrun.io/v1",
        "kind": "Rule",
        "metadata": {"name": name, **spec.pop("meta", {})},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def example_rules() -> list[dict]:
    docs = []
    for path in example_files():
        loaded = load_path(path)
        assert loaded.ok, [str(e) for e in loaded.errors]
        docs += [{**d.data, "version": 1} for d in loaded.documents if d.data["kind"] == "Rule"]
    return docs


OPP = {
    "id": "o1",
    "name": "Globex renewal",
    "amount": 80000.0,
    "currency": "EUR",
    "account": {"name": "Globex"},
    "primary_contact": {"email": "cfo@globex.example"},
}


def test_examples_fire_on_stage_entered(example_rules: list[dict]) -> None:
    rules = compile_rules(example_rules)
    assert not rules.errors
    event = {
        "type": "stage.entered",
        "stage": "acquire",
        "opp": OPP,
        "org": "acme",
        "branch": "emea",
        "role": "ae",
    }
    outcomes = {o.rule: o for o in rules.evaluate(event)}
    assert len(outcomes) == len(example_rules)
    big = outcomes["big-deal-to-acquire"]
    assert big.fired and big.version == 1
    assert big.actions == [
        PlannedAction(
            "slack.post_message",
            {"channel": "#deals", "text": "Globex renewal entered Acquire (80000.0 EUR)"},
        ),
        PlannedAction("docusign.send_envelope", {"template": "msa", "signer": "cfo@globex.example", "opportunity_id": "o1"}),
        PlannedAction("ai.next_action", {}),
    ]
    assert outcomes["emea-won-to-erp"].reason.startswith("stage mismatch")
    assert outcomes["contract-signed-move-on"].reason.startswith("trigger mismatch")
    assert outcomes["weekly-pipeline-review"].reason == "disabled"


def test_condition_false_and_scope_reasons(example_rules: list[dict]) -> None:
    rules = compile_rules(example_rules)
    small = {"type": "stage.entered", "stage": "keep", "opp": {**OPP, "amount": 500.0}, "branch": "emea"}
    assert {o.rule: o.reason for o in rules.evaluate(small)}["emea-won-to-erp"].startswith("condition false")
    us = {"type": "stage.entered", "stage": "keep", "opp": OPP, "branch": "us", "role": "ae"}
    out = {o.rule: o for o in rules.evaluate(us)}["emea-won-to-erp"]
    assert not out.fired and out.reason == "out of scope: branch 'us' not in ['emea']"
    call = {"type": "call.recorded", "opp": OPP, "event": {"call_id": "c1"}, "role": "manager"}
    assert {o.rule: o for o in rules.evaluate(call)}["call-recorded-coach"].reason.startswith(
        "out of scope: role"
    )
    fired = rules.fired({**call, "role": "ae"})
    assert [(o.rule, o.actions) for o in fired] == [
        ("call-recorded-coach", [PlannedAction("ai.next_action", {"reason": "call c1 recorded"})])
    ]


def test_broken_rule_never_stops_the_others() -> None:
    rules = compile_rules(
        [
            {**rule("bad-cel", on="lead.created", when="lead.score >"), "version": 2},
            {"name": "not-a-rule", "version": 1, "spec": {"on": 5}},
            {**rule("good", on="lead.created"), "version": 1},
        ]
    )
    assert set(rules.errors) == {"bad-cel", "not-a-rule"}
    outcomes = {o.rule: o for o in rules.evaluate({"type": "lead.created", "lead": {"score": 1}})}
    assert outcomes["good"].fired
    assert not outcomes["bad-cel"].fired and "CEL syntax error" in outcomes["bad-cel"].reason
    assert outcomes["not-a-rule"].reason.startswith("invalid rule:")


def test_runtime_errors_are_reasons_not_exceptions() -> None:
    rules = compile_rules(
        [
            {**rule("needs-field", on="opportunity.updated", when="opp.amount > 1.0"), "version": 1},
            {
                **rule(
                    "template",
                    on="opportunity.updated",
                    do=[{"opportunity.add_task": {"title": "Call {{ opp.owner.name }}"}}],
                ),
                "version": 1,
            },
        ]
    )
    outcomes = {o.rule: o for o in rules.evaluate({"type": "opportunity.updated", "opp": {"name": "x"}})}
    assert outcomes["needs-field"].reason == "condition error: no such field 'amount' in `opp.amount > 1.0`"
    assert outcomes["template"].reason.startswith("do[0] opportunity.add_task: title: template error:")


def test_schedule_trigger_matches_its_cron() -> None:
    rules = compile_rules([{**rule("weekly", on="schedule", schedule="0 9 * * 1"), "version": 1}])
    assert rules.evaluate({"type": "schedule", "schedule": "0 9 * * 1"})[0].fired
    assert rules.evaluate({"type": "schedule", "schedule": "0 8 * * *"})[0].reason.startswith(
        "schedule mismatch"
    )


def test_relative_date_rules_match_their_days() -> None:
    rules = compile_rules([
        {**rule("week-before", on="opportunity.close_date_approaching", days_before=7,
                do=[{"opportunity.add_task": {"title": "{{ event.days_before }} days to {{ event.close_date }}"}}]),
         "version": 1},
        {**rule("idle", on="opportunity.stale", days=14), "version": 1},
    ])  # fmt: skip
    event = {"type": "opportunity.close_date_approaching", "days": 7, "opp": OPP,
             "event": {"days_before": 7, "close_date": "2030-01-31T00:00:00+00:00"}}
    outcomes = {o.rule: o for o in rules.evaluate(event)}
    assert outcomes["week-before"].actions == [
        PlannedAction("opportunity.add_task", {"title": "7 days to 2030-01-31T00:00:00+00:00"})]
    assert outcomes["idle"].reason.startswith("trigger mismatch")
    assert rules.evaluate({**event, "days": 3})[1].reason == "days mismatch: rule runs at 7 days, event is for 3"
    assert [o.rule for o in rules.fired({"type": "opportunity.stale", "days": 14, "opp": OPP})] == ["idle"]
    assert rules.fired({"type": "opportunity.stale", "opp": OPP})  # a pasted event without days: any days


def test_inputs_as_name_version_spec() -> None:
    doc = rule("by-spec", on="lead.created")
    rules = compile_rules([{"name": "by-spec", "version": 7, "spec": doc}])
    [outcome] = rules.evaluate({"type": "lead.created"})
    assert (outcome.rule, outcome.version, outcome.fired) == ("by-spec", 7, True)
    assert rules.triggers == {"lead.created"}


def test_sandbox_blocks_unsafe_template_access() -> None:
    evil = rule(
        "evil", on="lead.created", do=[{"opportunity.add_task": {"title": "{{ lead.__class__.__mro__ }}"}}]
    )
    [outcome] = compile_rules([{**evil, "version": 1}]).evaluate({"type": "lead.created", "lead": {"a": 1}})
    assert not outcome.fired and "template error" in outcome.reason


def test_rendered_params_are_fresh_per_event() -> None:
    rules = compile_rules(
        [
            {
                **rule(
                    "c", on="lead.created", do=[{"opportunity.set_field": {"field": "tags", "value": ["a"]}}]
                ),
                "version": 1,
            }
        ]
    )
    first = rules.fired({"type": "lead.created"})[0].actions[0].params
    first["value"].append("mutated")
    assert rules.fired({"type": "lead.created"})[0].actions[0].params == {"field": "tags", "value": ["a"]}


def test_stored_versions_compile_once() -> None:
    from types import SimpleNamespace

    doc = rule("stored", on="lead.created")
    versions = [SimpleNamespace(name="stored", version=3, content_hash="h3", spec=doc)]
    first = compile_rules(versions)
    assert compile_rules([SimpleNamespace(**vars(versions[0]))]) is first
    assert (
        compile_rules([SimpleNamespace(name="stored", version=4, content_hash="h4", spec=doc)]) is not first
    )
    assert first.fired({"type": "lead.created"})[0].version == 3


def test_constant_params_are_copied_per_event() -> None:
    rules = compile_rules(
        [{**rule("flat", on="lead.created", do=[{"opportunity.add_task": {"title": "T"}}]), "version": 1}]
    )
    first = rules.fired({"type": "lead.created"})[0].actions[0].params
    first["title"] = "mutated"
    assert rules.fired({"type": "lead.created"})[0].actions[0].params == {"title": "T"}
