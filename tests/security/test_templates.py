"""Finding 2: Jinja2 rendering is bounded — values, loops, calls and output — and compiling folds nothing big."""

from __future__ import annotations

import httpx
import pytest

from hub.runtime import Hub
from rules.templating import MAX_OUTPUT_CHARS, TemplateProblem, compile_params
from tests.routes.test_resources import key_for
from tests.security.test_cel_cost import draft

TEXT = "ab" * 30_000
VALUES = {"opp": {"name": "Globex", "text": TEXT, "contacts": [{"email": "a@b.c"}] * 1000}}


def render(template: str) -> str:
    return compile_params({"t": template}).render(VALUES)["t"]


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ 'a' * 200000000 }}", "repeated"),
        ("{{ [1] * 200000000 }}", "repeated"),
        ("{{ 2 ** 100000000 }}", "bits"),
        ("{% for a in range(4000) %}{% for b in range(4000) %}x{% endfor %}{% endfor %}", "loop iterations"),
        ("{% for a in opp.contacts %}{% for b in opp.contacts %}{% endfor %}{% endfor %}", "loop iterations"),
        ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}", "calls"),
        ("{% set a = opp.text %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a|length }}", "characters"),
        ("{{ opp.text + opp.text }}", "characters"),
        ("{{ opp.text|replace('', opp.text) }}", "replace()"),
        ("{{ opp.text.replace('a', opp.text) }}", "replace()"),
        ("{{ opp.text|indent(opp.text) }}", "indent()"),
        ("{{ 'a'|center(999999999) }}", "width"),
        ("{{ 'a'.ljust(999999999) }}", "width"),
        ("{{ '%0999999d' % 1 }}", "format width"),
        ("{{ '{:>999999}'.format(1) }}", "format width"),
        ("{{ '%0999999d'|format(1) }}", "format width"),
        ("{{ range(9000)|join(opp.text) }}", "join()"),
        ("{{ range(200000)|list }}", "range"),
        ("{% for c in opp.contacts %}{{ opp.text }}{% endfor %}", str(MAX_OUTPUT_CHARS)[:3]),
    ],
)
def test_costly_templates_are_stopped_while_rendering(template: str, reason: str) -> None:
    with pytest.raises(TemplateProblem, match="template limit") as caught:
        render(template)
    assert reason in caught.value.message


@pytest.mark.parametrize("template", ["{{ lipsum(100000) }}", "{% set ns = namespace(s='a') %}{{ ns.s }}"])
def test_generators_and_mutable_state_are_not_available(template: str) -> None:
    with pytest.raises(TemplateProblem, match="undefined"):
        render(template)


def test_ordinary_templates_render() -> None:
    assert render("{{ opp.name }} entered Acquire") == "Globex entered Acquire"
    assert render("{{ opp.contacts|map(attribute='email')|join(', ') }}").count("a@b.c") == 1000
    assert render("{% for c in opp.contacts[:2] %}{{ loop.index }}:{{ c.email }} {% endfor %}") == "1:a@b.c 2:a@b.c "
    assert render("{{ '%s-%05d'|format(opp.name, 7) }} {{ '{}!'.format(opp.name|upper) }}") == "Globex-00007 GLOBEX!"


async def test_dry_run_and_validate_answer_for_a_viewer(api: httpx.AsyncClient, hub: Hub) -> None:
    viewer = await key_for(hub, "acme", "viewer")
    rule = draft("true")
    rule["spec"]["do"] = [{"opportunity.add_task": {"title": "{{ 'a' * 200000000 }}"}}]
    r = await api.post("/v1/resources:validate", json=rule, headers=viewer)
    assert r.status_code == 200, r.text  # compiling folds no constant: nothing is allocated
    event = {"type": "payment.received", "opp": {"name": "Globex"}}
    r = await api.post("/v1/rules:test", json={"event": event, "rules": [rule]}, headers=viewer)
    assert r.status_code == 200, r.text
    outcome = r.json()["outcomes"][0]
    assert not outcome["fired"] and "template limit" in outcome["reason"]
