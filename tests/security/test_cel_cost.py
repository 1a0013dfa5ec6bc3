"""Finding 1: a condition's cost is bounded at apply time, and so are the inputs it is evaluated against."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.bounded import evaluate
from hub.problems import Problem
from hub.runtime import Hub
from rules import cost, limits
from rules.expr import RULE_VARIABLES, ExpressionError, activation, compile_condition
from tests.conftest import bearer
from tests.routes.test_resources import key_for
from tests.webhooks.conftest import inbox_count, make_connection, post_signed

CUBIC = "event.l.map(x, event.l).size() > 0"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


def draft(when: str, name: str = "costly") -> dict:
    return {
        "apiVersion": "fulqrun.io/v1",
        "kind": "Rule",
        "metadata": {"name": name},
        "spec": {"on": "payment.received", "when": when, "do": [{"opportunity.add_task": {"title": "x"}}]},
    }


@pytest.mark.parametrize(
    ("source", "column"),
    [
        (CUBIC, 9),  # the attack: 3,000 items never answered
        ("event.l.map(x, x).size() > 0", 9),  # quadratic in this binding
        ("opp.contacts.filter(c, c.role == 'x').size() > 0", 14),
        ("event.l.exists(x, x in event.l)", 9),  # a scan of the list for each of its items
        ("event.l.exists(x, x == event.s)", 9),
        ("event.s.matches(event.t)", 9),  # a pattern from the input: compiled for every call
    ],
)
def test_costly_conditions_are_refused_with_their_column(source: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_condition(source, RULE_VARIABLES)
    assert "CEL cost limit" in caught.value.message and caught.value.column == column


@pytest.mark.parametrize(
    "source",
    [
        "opp.amount >= 50000.0",
        "opp.contacts.exists(c, c.role == 'champion' && c.email.endsWith('@acme.com'))",
        "opp.contacts.all(c, has(c.email)) && size(opp.contacts) > 2",
        "[1, 2, 3].map(x, x * 2).size() == 3",
        "event.data.object.lines.data.exists(l, l.amount > 100) || event.data.object.description.contains('x')",
    ],
)
def test_ordinary_conditions_are_accepted(source: str) -> None:
    assert cost.estimate(source) <= cost.BUDGET
    compile_condition(source, RULE_VARIABLES)


def maximal(size: int = limits.MAX_ITEMS) -> dict:
    """Inputs at the documented limits: lists of MAX_ITEMS items, long strings."""
    text = "ab" * (limits.MAX_STRING // 2)
    items = [{"role": "ae", "email": f"u{i}@example.com", "amount": i} for i in range(size)]
    return {
        "opp": {"contacts": items, "amount": 1.0, "name": text},
        "event": {"l": list(range(size)), "s": text, "data": {"object": {"lines": {"data": items}, "description": text}}},
    }


def test_accepted_conditions_answer_on_maximal_inputs() -> None:
    """The costliest shapes the estimator accepts, on the largest inputs the hub lets in: they finish."""
    values = activation(maximal())
    accepted = [
        "opp.contacts.exists(c, c.role == 'champion' && c.email.endsWith('@acme.com'))",
        "opp.contacts.all(c, c.amount >= 0) && opp.contacts.exists(c, c.amount < 0)",
        "event.s.matches('a+c') || event.s.contains('zz')",
        "(event.l + event.l).exists(x, x < 0)",
    ]
    started = time.perf_counter()
    for source in accepted:
        compile_condition(source, RULE_VARIABLES).evaluate(values)
    assert time.perf_counter() - started < 2.0  # generous: milliseconds each; the attack took minutes


def test_input_limits_refuse_long_lists_deep_nesting_and_long_strings() -> None:
    with pytest.raises(limits.LimitExceeded, match="3000 items") as caught:
        limits.check({"l": list(range(3000))}, "event")
    assert caught.value.path == "event.l"
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(limits.LimitExceeded, match="nested deeper"):
        limits.check(nested)
    with pytest.raises(limits.LimitExceeded, match="characters"):
        limits.check({"a": ["x" * (limits.MAX_STRING + 1)]})
    limits.check(maximal())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(doc=JSON, spaced=st.booleans())
def test_the_size_shortcut_never_passes_what_the_walk_refuses(doc: object, spaced: bool) -> None:
    """``within_by_size`` is only a sufficient condition: whatever it lets through, ``check`` accepts.

    The limits are shrunk so generated documents cross each of them often.
    """
    raw = json.dumps(doc, ensure_ascii=False, separators=(", ", ": ") if spaced else (",", ":")).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "MAX_DEPTH", 3)
        patch.setattr(limits, "MAX_ITEMS", 4)
        patch.setattr(limits, "MAX_STRING", 8)
        if limits.within_by_size(raw):
            limits.check(doc)


def test_the_size_shortcut_lets_real_deliveries_skip_the_walk() -> None:
    small = json.dumps({"l": list(range(limits.MAX_ITEMS))}).encode()
    assert limits.within_by_size(small)  # 999 commas: a list of 1,000 items at most
    assert not limits.within_by_size(json.dumps({"l": list(range(limits.MAX_ITEMS + 1))}).encode())
    deep: list = []
    for _ in range(limits.MAX_DEPTH - 1):
        deep = [deep]
    assert limits.within_by_size(json.dumps(deep).encode())  # 32 brackets
    limits.check(deep)
    with pytest.raises(limits.LimitExceeded, match="nested deeper"):
        limits.check([deep])
    assert not limits.within_by_size(json.dumps([deep]).encode())


async def test_rules_test_refuses_the_attack_for_a_viewer(api: httpx.AsyncClient, hub: Hub) -> None:
    viewer = await key_for(hub, "acme", "viewer")
    attack = {"event": {"type": "payment.received", "l": list(range(3000))}, "rules": [draft(CUBIC)]}
    r = await api.post("/v1/rules:test", json=attack, headers=viewer)
    assert r.status_code == 422 and r.json()["field"] == "event.l", r.text
    within = {"event": {"type": "payment.received", "l": list(range(1000))}, "rules": [draft(CUBIC)]}
    r = await api.post("/v1/rules:test", json=within, headers=viewer)
    assert r.status_code == 422, r.text
    assert "CEL cost limit" in r.json()["errors"][0]["message"]
    health = await api.get("/healthz")
    assert health.status_code == 200


async def test_apply_names_the_line_and_column(api: httpx.AsyncClient, admin_key: str) -> None:
    text = (
        "apiVersion: fulqrun.io/v1\nkind: Rule\nmetadata: {name: costly}\nspec:\n  on: payment.received\n"
        f'  when: "{CUBIC}"\n  do:\n    - opportunity.add_task: {{title: x}}\n'
    )
    r = await api.put("/v1/rules/costly", content=text, headers={**bearer(admin_key), "Content-Type": "application/yaml"})
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert (error["line"], error["field"]) == (6, "spec.when")
    assert "CEL cost limit" in error["message"] and "column 9 of the expression" in error["message"]


async def test_webhook_event_beyond_the_limits_is_refused_and_not_stored(api: httpx.AsyncClient, hub: Hub) -> None:
    connection = await make_connection(hub, "generic", secrets=GENERIC_SECRET)
    body = json.dumps({"id": "evt_1", "type": "payment.received", "l": list(range(3000))}).encode()
    r = await post_signed(api, hub, "generic", connection, body, "application/json")
    assert (r.status_code, r.json()["reason"]) == (400, "malformed_event"), r.text
    assert "3000 items" in r.json()["detail"]
    assert await inbox_count(hub) == 0


async def test_opportunity_beyond_the_limits_is_refused(api: httpx.AsyncClient, hub: Hub) -> None:
    crm = await key_for(hub, "acme", "crm")
    contacts = [{"name": "c", "email": f"c{i}@x.com"} for i in range(3000)]
    r = await api.put("/v1/opportunities/o1", json={"name": "Big", "contacts": contacts}, headers=crm)
    assert r.status_code == 422 and r.json()["field"] == "opp.contacts", r.text


async def test_evaluation_runs_elsewhere_per_org_capped_with_a_hard_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from hub import bounded

    monkeypatch.setattr(bounded, "QUEUE", 0)  # nothing waits: the org's one turn taken is a 429
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    assert await evaluate("acme", sum, [1, 2]) == 3  # the pool is up
    task = asyncio.create_task(ticker())
    try:
        slow = asyncio.create_task(evaluate("acme", time.sleep, 30, deadline=1.0))
        await asyncio.sleep(0.2)
        with pytest.raises(Problem) as busy:  # the org's one slot is taken
            await evaluate("acme", sum, [1])
        assert await evaluate("other", sum, [1, 2]) == 3  # another org is served meanwhile
        with pytest.raises(Problem) as late:  # killed at its deadline, not after 30 s
            await slow
    finally:
        task.cancel()
    assert (busy.value.status, late.value.status) == (429, 503)
    assert ticks >= 50  # the loop kept running while the work ran in the pool
    assert await evaluate("acme", sum, [1]) == 1  # a fresh pool serves the org again
    with pytest.raises(limits.LimitExceeded) as caught:  # errors come back whole from the process
        await evaluate("acme", limits.check, {"l": list(range(2000))}, "event")
    assert caught.value.path == "event.l"


def burn(seconds: float) -> float:
    """Use ``seconds`` of CPU (in a pool process)."""
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass
    return seconds


async def test_evaluation_yields_the_cpu_and_each_org_has_a_cpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from hub import bounded

    assert await evaluate("acme", os.getpriority, os.PRIO_PROCESS, 0) == bounded.NICE  # lowest priority
    monkeypatch.setattr(bounded, "CPU_BURST", 0.2)
    monkeypatch.setattr(bounded, "CPU_SHARE", 0.1)
    monkeypatch.setattr(bounded, "MAX_WAIT_SECONDS", 1.0)
    await evaluate("greedy", burn, 0.4, deadline=60.0)  # within its saved budget when it started
    with pytest.raises(Problem) as spent:  # now in debt for longer than it may wait: refused before it runs
        await evaluate("greedy", sum, [1])
    assert spent.value.status == 429 and "CPU budget" in spent.value.detail
    assert 2 <= int(spent.value.headers["Retry-After"]) <= 3  # its debt ÷ the share, rounded up
    assert await evaluate("other", sum, [1, 2]) == 3  # other orgs keep their own budget
    await asyncio.sleep(int(spent.value.headers["Retry-After"]) - 1)
    began = time.monotonic()
    assert await evaluate("greedy", sum, [1]) == 1  # a debt it may wait out: it waits, then runs
    assert 0 < time.monotonic() - began <= 2.5


async def test_an_orgs_evaluations_wait_their_turn_and_a_full_queue_is_429(monkeypatch: pytest.MonkeyPatch) -> None:
    from hub import bounded

    monkeypatch.setattr(bounded, "QUEUE", 2)
    assert await evaluate("acme", sum, [1]) == 1  # the pool is up
    first = asyncio.create_task(evaluate("queued", time.sleep, 0.5))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(evaluate("queued", time.monotonic)) for _ in range(2)]  # wait for the turn
    await asyncio.sleep(0.05)
    with pytest.raises(Problem) as full:
        await evaluate("queued", sum, [1])
    assert full.value.status == 429 and "running or waiting" in full.value.detail
    assert bounded.refusal("queued") is not None and bounded.refusal("acme") is None
    assert await evaluate("acme", sum, [2]) == 2  # another org is not behind them
    finished = time.monotonic()
    await first
    ran = await asyncio.gather(*waiting)
    assert all(at >= finished for at in ran)  # they ran after the first had its turn, none refused
    assert "queued" not in bounded._admitted and "queued" not in bounded._turns  # nothing kept for an idle org


async def test_an_org_over_its_evaluation_budget_is_refused_before_its_body_is_parsed(
    api: httpx.AsyncClient, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import EvaluationAdmission
    from hub import bounded

    monkeypatch.setattr(EvaluationAdmission, "REFUSAL_DELAY", 0.3)
    spent, other = await key_for(hub, "spent", "viewer"), await key_for(hub, "other", "viewer")
    monkeypatch.setitem(bounded._budgets, "spent", (-bounded.CPU_SHARE * (bounded.MAX_WAIT_SECONDS + 5),
                                                    time.monotonic()))  # in debt for longer than it may wait
    malformed = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    for path in ("/v1/rules:test", "/v1/rules/any:test", "/v1/resources:validate"):
        began = time.monotonic()
        refused = await api.post(path, content=malformed["content"], headers={**spent, **malformed["headers"]})
        assert time.monotonic() - began >= 0.3  # held: a client resending at once gets a refusal per 0.3 s at most
        assert refused.status_code == 429 and "CPU budget" in refused.json()["detail"], path  # not parsed: no 4xx
        assert int(refused.headers["Retry-After"]) >= 1
    parsed = await api.post("/v1/rules:test", content=malformed["content"], headers={**other, **malformed["headers"]})
    assert parsed.status_code in (400, 422)  # another org's request is read and judged as always
