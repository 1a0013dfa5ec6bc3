"""Provider actions register their params, so a rule with a misspelled param is refused at apply time."""

from __future__ import annotations

from connectors.catalogue import import_action_modules
from rules.loader import load_text

BAD = """apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: bad-params, org: acme, branches: ["*"], roles: ["*"]}
spec:
  on: stage.entered
  stage: acquire
  do:
    - slack.post_message: {chanel: "#deals", text: "hi"}
"""


def test_provider_action_params_are_checked() -> None:
    import_action_modules()
    result = load_text(BAD, "bad.yaml")
    messages = [str(error) for error in result.errors]
    assert any("missing required field 'channel'" in m and "bad.yaml:8" in m for m in messages), messages
    assert any("unknown field 'chanel'" in m for m in messages), messages


def test_templated_values_are_checked_once_rendered_not_at_apply_time() -> None:
    import_action_modules()
    text = BAD.replace('{chanel: "#deals", text: "hi"}', '{channel: "#deals", text: "hi"}').replace(
        "slack.post_message", "docusign.send_envelope"
    ).replace('channel: "#deals", text: "hi"', 'template: msa, signer: "{{ opp.primary_contact.email }}", opportunity_id: x')
    assert load_text(text, "ok.yaml").errors == []
    literal = text.replace('"{{ opp.primary_contact.email }}"', "not-an-email")
    assert any("signer" in str(e) for e in load_text(literal, "bad.yaml").errors)
