"""Bad input: each kind of mistake gives one clear message with the file, line, column and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.catalogue import import_action_modules
from rules.expr import MAX_CHARS, ExpressionError, compile_condition
from rules.loader import MAX_FILE_BYTES, load_path, load_text

QUOTE = '"'
RULE = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: big-deal}
spec:
  on: stage.entered
  stage: acquire
  when: "opp.amount >= 50000.0"
  do:
    - slack.post_message: {channel: "#deals", text: "{{ opp.name }} entered Acquire"}
"""

PIPELINE = """\
apiVersion: fulqrun.io/v1
kind: Pipeline
metadata: {name: mini}
spec:
  stages:
    - {key: prospect, name: Prospect, color: "#6B7280", probability: 0.1, checklist: [met]}
    - {key: engage, name: Engage, color: "#2563EB", probability: 0.3}
  transitions:
    - {from: prospect, to: engage, when: "checklist.met"}
"""


def col(text: str, line: int, needle: str) -> int:
    """1-based column of ``needle`` on 1-based ``line``."""
    return text.splitlines()[line - 1].index(needle) + 1


def only_error(text: str, file: str = "r.yaml") -> str:
    result = load_text(text, file)
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    assert all(d.resource is None for d in result.documents)
    return str(result.errors[0])


def test_the_documents_are_valid_as_given() -> None:
    assert load_text(RULE).ok and load_text(PIPELINE).ok


def test_wrong_type() -> None:
    text = PIPELINE.replace("probability: 0.3", 'probability: "high"')
    assert only_error(text, "p.yaml") == (
        f"p.yaml:7:{col(text, 7, QUOTE + 'high')}: spec.stages[1].probability: wrong type: should be a valid number, "
        "got a string"
    )


def test_out_of_range_and_bad_color() -> None:
    text = PIPELINE.replace("probability: 0.3", "probability: 1.5").replace('"#2563EB"', "blue")
    errors = [str(e) for e in load_text(text, "p.yaml").errors]
    assert errors == [
        f"p.yaml:7:{col(text, 7, 'blue')}: spec.stages[1].color: must be a hex color such as '#2563EB', got 'blue'",
        f"p.yaml:7:{col(text, 7, '1.5')}: spec.stages[1].probability: Input should be less than or equal to 1",
    ]


def test_unknown_field_points_at_the_key() -> None:
    assert only_error(RULE.replace("  stage: acquire", "  stage: acquire\n  priority: 1")) == (
        "r.yaml:7:3: spec.priority: unknown field 'priority'"
    )


def test_unknown_action() -> None:
    assert only_error(RULE.replace("slack.post_message", "slack.send_message")) == (
        "r.yaml:9:7: spec.do[0][\"slack.send_message\"]: unknown action 'slack.send_message' "
        "(did you mean 'slack.post_message'?)"
    )


def test_bad_action_params() -> None:
    text = RULE.replace(
        '- slack.post_message: {channel: "#deals", text: "{{ opp.name }} entered Acquire"}',
        "- opportunity.add_task: {title: Call, due_in_days: soon}",
    )
    assert only_error(text) == (
        f'r.yaml:9:{col(text, 9, "soon")}: spec.do[0]["opportunity.add_task"].due_in_days: '
        "wrong type: should be a valid integer, unable to parse string as an integer, "
        "got a string"
    )


def test_cel_syntax_error() -> None:
    assert only_error(RULE.replace(">= 50000.0", ">= ")) == (
        "r.yaml:7:9: spec.when: CEL syntax error: mismatched input '<EOF>' (at column 15 of the expression)"
    )


def test_cel_type_error() -> None:
    message = only_error(RULE.replace("opp.amount >= 50000.0", "opp.name > 5"))
    assert message.startswith("r.yaml:7:9: spec.when: CEL type error: No such overload")


def test_cel_non_boolean_condition() -> None:
    assert only_error(RULE.replace("opp.amount >= 50000.0", "opp.amount * 2.0")) == (
        "r.yaml:7:9: spec.when: CEL type error: the condition must be a boolean, not double"
    )


def test_cel_unknown_variable_and_function() -> None:
    assert only_error(RULE.replace("opp.amount", "deal.amount")).startswith(
        "r.yaml:7:9: spec.when: unknown variable 'deal' in CEL expression (known: branch, event, lead, opp,"
    )
    assert only_error(RULE.replace("opp.amount >= 50000.0", "max(opp.amount, 1.0) > 2.0")) == (
        "r.yaml:7:9: spec.when: unknown CEL function 'max'"
    )


def test_cel_limits() -> None:
    with pytest.raises(ExpressionError, match="too long"):
        compile_condition("true && " * (MAX_CHARS // 8 + 1) + "true", frozenset())
    with pytest.raises(ExpressionError, match="macro exists\\(\\) inside another macro"):
        compile_condition("opp.contacts.all(c, opp.contacts.exists(d, d == c))", frozenset({"opp"}))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_condition("(" * 20 + "true" + ")" * 20, frozenset())
    compile_condition("opp.contacts.exists(c, c.role == 'champion')", frozenset({"opp"}))  # one level is fine


def test_template_error() -> None:
    assert only_error(RULE.replace("{{ opp.name }}", "{{ opp.name }")) == (
        "r.yaml:9:53: spec.do[0][\"slack.post_message\"].text: template syntax error: unexpected '}'"
    )


def test_duplicate_stage_key() -> None:
    text = PIPELINE.replace("{key: engage", "{key: prospect").replace("to: engage", "to: prospect")
    text = text.replace("{from: prospect, to: prospect", "{from: '*', to: prospect")
    assert only_error(text) == (
        f"r.yaml:7:{col(text, 7, 'prospect')}: spec.stages[1].key: "
        "duplicate stage key 'prospect' (also spec.stages[0])"
    )


def test_transition_to_an_undefined_stage() -> None:
    assert only_error(PIPELINE.replace("to: engage", "to: acquire")) == (
        "r.yaml:9:28: spec.transitions[0].to: transition to undefined stage 'acquire'"
    )


def test_unknown_checklist_item_in_criteria() -> None:
    text = PIPELINE.replace('when: "checklist.met"', 'when: "checklist.mett"')
    assert only_error(text) == (
        f"r.yaml:9:{col(text, 9, QUOTE + 'checklist')}: spec.transitions[0].when: "
        "checklist item 'mett' is not defined by any stage"
    )


def test_yaml_syntax_error() -> None:
    text = RULE.replace("metadata: {name: big-deal}", "metadata: {name: big-deal")
    assert only_error(text) == (
        "r.yaml:4:5: YAML syntax error: while parsing a flow mapping expected ',' or '}', but got ':'"
    )


def test_duplicate_yaml_key() -> None:
    assert only_error(RULE + "  when: true\n") == "r.yaml:10:3: spec: duplicate key 'when' (first at line 7)"


def test_five_megabyte_document(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(RULE + "# " + "x" * (5 * 1024 * 1024) + "\n")
    result = load_path(big)
    assert [str(e) for e in result.errors] == [
        f"{big}:1:1: file is {big.stat().st_size:,} bytes; at most {MAX_FILE_BYTES:,} are accepted"
    ]
    assert result.documents == []


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    assert "document too large: more than 100000 YAML nodes" in only_error("\n".join(lines))


def test_yaml_1_1_surprises_are_avoided() -> None:
    doc = load_text(
        RULE.replace("entered Acquire", "entered Acquire").replace(
            "  stage: acquire", "  stage: acquire\n  description: 2024-01-01"
        )
    ).documents[0]
    assert doc.data["spec"]["on"] == "stage.entered"  # `on` is a key, not True
    assert doc.data["spec"]["description"] == "2024-01-01"  # dates stay strings


def test_every_error_of_a_multi_document_file_and_no_partial_resources() -> None:
    text = (
        RULE
        + "---\n"
        + PIPELINE.replace("to: engage", "to: acquire")
        + "---\n"
        + RULE.replace("name: big-deal", "name: Big")
    )
    result = load_text(text, "all.yaml")
    assert [(e.document, e.line, e.field) for e in result.errors] == [
        (1, 19, "spec.transitions[0].to"),
        (2, 23, "metadata.name"),
    ]
    assert [d.resource is not None for d in result.documents] == [True, False, False]
    assert not result.ok


@pytest.mark.parametrize(
    ("trigger", "action", "needs", "names"),
    [
        ("lead.created", "opportunity.set_field: {field: x, value: 1}", "an opportunity", "a lead"),
        ("schedule", "ai.next_action: {}", "a lead or an opportunity", "the org"),
        ("payment.received", "ai.score_lead: {}", "a lead", "an opportunity or the org"),
        ("connection.failed", "opportunity.transition: {to: keep}", "an opportunity", "the org"),
    ],
)
def test_an_action_that_cannot_run_for_its_trigger_is_refused_at_its_line(
    trigger: str, action: str, needs: str, names: str
) -> None:
    schedule = '\n  schedule: "0 9 * * 1"' if trigger == "schedule" else ""
    text = RULE.replace("  stage: acquire\n", "").replace("on: stage.entered", f"on: {trigger}{schedule}")
    text = text.replace('slack.post_message: {channel: "#deals", text: "{{ opp.name }} entered Acquire"}', action)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if action in t)
    name = action.split(":")[0]
    assert only_error(text) == (
        f'r.yaml:{line}:{col(text, line, name)}: spec.do[0]["{name}"]: {name} needs {needs}, '
        f"but {trigger} events name {names} only"
    )


def test_every_error_of_a_document_in_one_pass() -> None:
    import_action_modules()  # the provider actions' params models (a process that never imported them checks none)
    text = RULE.replace('when: "opp.amount >= 50000.0"', 'when: "opp.amount >= "').replace(
        "  do:\n", "  colour: red\n  do:\n").replace("#deals", "#deals\", chanel: \"x")
    result = load_text(text, "r.yaml")
    messages = sorted(str(e) for e in result.errors)
    assert len(messages) == 3, messages
    assert any("spec.colour: unknown field 'colour'" in m for m in messages)
    assert any(m.startswith("r.yaml:7:") and "spec.when" in m for m in messages)  # the CEL error, a line above
    assert any("chanel: unknown field 'chanel'" in m for m in messages)


@pytest.mark.parametrize("trigger, field", [("opportunity.close_date_approaching", "days_before"),
                                            ("opportunity.stale", "days")])
def test_relative_date_triggers_need_their_days(trigger: str, field: str) -> None:
    base = RULE.replace("  stage: acquire\n", "").replace("on: stage.entered", f"on: {trigger}")
    text = base.replace(f"on: {trigger}", f"on: {trigger}\n  {field}: 7")
    assert load_text(text).ok
    assert only_error(base) == f"r.yaml:5:3: spec: missing required field {field!r} (a number of days, 1 or more) for on: {trigger}"
    for bad, message in (("0", "Input should be greater than or equal to 1"),
                         ("3651", "Input should be less than or equal to 3650"),
                         ("soon", "wrong type: should be a valid integer, got a string"),
                         ("1.5", "wrong type: should be a valid integer, got a number")):
        wrong = text.replace(f"{field}: 7", f"{field}: {bad}")
        assert only_error(wrong) == f"r.yaml:6:{col(wrong, 6, bad)}: spec.{field}: {message}"
    other = "days" if field == "days_before" else "days_before"
    misplaced = text.replace(f"{field}: 7", f"{field}: 7\n  {other}: 3")
    assert only_error(misplaced) == f"r.yaml:7:3: spec.{other}: {other!r} applies only to on: " + (
        "opportunity.stale" if other == "days" else "opportunity.close_date_approaching")
