"""Benchmark: the rule engine against the same conditions as plain Python lambdas.

100 rules over 10 triggers (10 rules per trigger) evaluated against 10,000 events with
``RuleSet.evaluate`` (scope, trigger, stage, CEL condition, rendered params, one outcome per
rule), and the same 100 conditions as Python lambdas dispatched by trigger, measured in the same
run. A second scenario puts all 100 rules on one trigger (100 applicable rules per event, the
DESIGN §8 target: within 7× of plain Python). With ``--compare-google`` and ``cel_expr_python``
importable, the raw cost of 100 CEL conditions is also measured on Google's binding.

    .venv/bin/python bench/rules.py [--events 10000] [--compare-google]

The last line is ``ratio=<x>``: engine time / lambda time for the 100-rules/10-triggers scenario.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: bench/ (this file is rules.py) must not shadow the `rules` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from rules.engine import RuleSet, compile_rules
from rules.expr import activation

TRIGGERS = [
    "opportunity.created",
    "opportunity.updated",
    "stage.entered",
    "stage.exited",
    "lead.created",
    "payment.received",
    "contract.signed",
    "call.recorded",
    "slack.action",
    "document.changed",
]
STAGES = ["prospect", "engage", "acquire", "keep"]

# (CEL, the same as a Python lambda over the event), parametrised by i.
CONDITIONS: list[tuple[str, Callable[[int], Callable[[dict], bool]]]] = [
    ("opp.amount >= {a}.0", lambda i: lambda e, a=1000 * i: e["opp"]["amount"] >= a),
    (
        "opp.meddpicc.metrics >= {m} && opp.meddpicc.champion >= 1",
        lambda i: (
            lambda e, m=i % 4: e["opp"]["meddpicc"]["metrics"] >= m and e["opp"]["meddpicc"]["champion"] >= 1
        ),
    ),
    (
        "opp.currency == 'EUR' && opp.amount > {a}.0",
        lambda i: lambda e, a=1000 * i: e["opp"]["currency"] == "EUR" and e["opp"]["amount"] > a,
    ),
    (
        "size(opp.contacts) >= {c} || opp.probability > 0.5",
        lambda i: lambda e, c=i % 5: len(e["opp"]["contacts"]) >= c or e["opp"]["probability"] > 0.5,
    ),
    (
        "opp.account.industry in ['software', 'retail'] && opp.account.employees > {n}",
        lambda i: (
            lambda e, n=10 * i: (
                e["opp"]["account"]["industry"] in ("software", "retail")
                and e["opp"]["account"]["employees"] > n
            )
        ),
    ),
]


def make_rules(triggers: list[str]) -> tuple[list[dict], dict[str, list[tuple[str, Callable[[dict], bool]]]]]:
    """100 rule documents and the equivalent lambdas indexed by trigger."""
    docs, lambdas = [], {t: [] for t in triggers}
    for i in range(100):
        trigger = triggers[i % len(triggers)]
        cel_text, make = CONDITIONS[i % len(CONDITIONS)]
        name = f"rule-{i:03d}"
        docs.append(
            {
                "apiVersion": "fulqrun.io/v1",
                "kind": "Rule",
                "version": 1,
                "metadata": {"name": name, "branches": ["*"], "roles": ["*"]},
                "spec": {
                    "on": trigger,
                    "when": cel_text.format(a=1000 * i, m=i % 4, c=i % 5, n=10 * i),
                    "do": [
                        {"ai.next_action": {}},
                        {"opportunity.add_task": {"title": "Follow up", "due_in_days": 2}},
                    ],
                },
            }
        )
        lambdas[trigger].append((name, make(i)))
    return docs, lambdas


def make_events(n: int, triggers: list[str], seed: int = 7) -> list[dict]:
    """Events with varied opportunities (deterministic)."""
    rnd = random.Random(seed)
    events = []
    for _ in range(n):
        opp = {
            "id": f"opp_{rnd.randrange(10**6)}",
            "name": "Deal",
            "amount": float(rnd.randrange(1000, 200_000)),
            "currency": rnd.choice(["EUR", "USD"]),
            "probability": rnd.random(),
            "meddpicc": {
                "metrics": rnd.randrange(4),
                "champion": rnd.randrange(3),
                "economic_buyer": rnd.randrange(3),
            },
            "contacts": [{"email": f"c{j}@x.example"} for j in range(rnd.randrange(5))],
            "account": {
                "name": "Acme",
                "industry": rnd.choice(["software", "retail", "bank"]),
                "employees": rnd.randrange(5000),
            },
        }
        events.append(
            {
                "type": rnd.choice(triggers),
                "stage": rnd.choice(STAGES),
                "opp": opp,
                "org": "acme",
                "branch": "emea",
                "role": "ae",
                "event": {},
            }
        )
    return events


ACTIONS = [("ai.next_action", {}), ("opportunity.add_task", {"title": "Follow up", "due_in_days": 2})]


def run_engine(rules: RuleSet, events: list[dict]) -> tuple[float, int]:
    """The run-time path: ``RuleSet.fired`` (fired rules with their rendered actions)."""
    start = time.perf_counter()
    fired = 0
    for event in events:
        fired += len(rules.fired(event))
    return time.perf_counter() - start, fired


def run_dry_run(rules: RuleSet, events: list[dict]) -> float:
    """The dry-run path: ``RuleSet.evaluate`` (an outcome and a reason for every rule)."""
    start = time.perf_counter()
    for event in events:
        rules.evaluate(event)
    return time.perf_counter() - start


def run_lambdas(
    index: dict[str, list[tuple[str, Callable[[dict], bool]]]], events: list[dict]
) -> tuple[float, int]:
    """The same rules in plain Python: lambdas by trigger; fired rules get a copy of their actions."""
    start = time.perf_counter()
    fired = 0
    for event in events:
        out = [
            (name, [(a, dict(p)) for a, p in ACTIONS])
            for name, condition in index.get(event["type"], ())
            if condition(event)
        ]
        fired += len(out)
    return time.perf_counter() - start, fired


def scenario(label: str, triggers: list[str], n_events: int, repeats: int, chunks: int = 20) -> float:
    """Engine and lambdas timed alternately on the same chunks of events; the ratio is the median of the
    per-chunk ratios, so a load change on this shared machine hits both sides of each ratio alike."""
    docs, lambdas = make_rules(triggers)
    rules = compile_rules(docs)
    assert not rules.errors, rules.errors
    events = make_events(n_events, triggers)
    size = max(1, n_events // chunks)
    parts = [events[i : i + size] for i in range(0, n_events, size)]
    totals = {"engine (fired)": 0.0, "lambdas": 0.0, "dry-run (evaluate)": 0.0}
    ratios, dry_ratios = [], []
    fired_engine = 0
    for _ in range(repeats):
        fired_engine = 0
        for part in parts:
            t_engine, fired = run_engine(rules, part)
            t_lambda, fired_lambda = run_lambdas(lambdas, part)
            t_dry = run_dry_run(rules, part)
            assert fired == fired_lambda, (fired, fired_lambda)  # the same decisions
            fired_engine += fired
            ratios.append(t_engine / t_lambda)
            dry_ratios.append(t_dry / t_lambda)
            for name, t in zip(totals, (t_engine, t_lambda, t_dry), strict=True):
                totals[name] += t
    per_event = len(docs) // len(triggers)
    print(
        f"{label}: 100 rules, {len(triggers)} trigger(s) ({per_event} applicable per event), {n_events} events, "
        f"{fired_engine} fired"
    )
    for name, t in totals.items():
        n = n_events * repeats
        print(f"  {name:<19} {n / t:>10,.0f} events/s  {t / n * 1e6:7.1f} µs/event")
    ratio = statistics.median(ratios)
    print(
        f"  ratio {ratio:.2f} (dry-run {statistics.median(dry_ratios):.2f}; median of {len(ratios)} chunks)"
    )
    return ratio


def compare_google(n: int = 2000) -> None:
    """Raw cost of 100 conditions over one shared activation: Rust binding vs Google's cel-expr-python."""
    try:
        from cel_expr_python import cel as google
    except ImportError:
        print("cel-expr-python: not importable (pip install --target DIR cel-expr-python; PYTHONPATH=DIR)")
        return
    docs, _ = make_rules(["x"])
    sources = [d["spec"]["when"] for d in docs]
    event = make_events(1, ["x"])[0]
    variables = {k: event.get(k) for k in ("opp", "event", "stage", "org", "branch", "role")}
    import cel

    rust = [cel.compile(s) for s in sources]
    t = google.Type
    env = google.NewEnv(
        variables={
            "opp": t.Map(t.STRING, t.DYN),
            "event": t.Map(t.STRING, t.DYN),
            "stage": t.STRING,
            "org": t.STRING,
            "branch": t.STRING,
            "role": t.STRING,
        }
    )
    goog = [env.compile(s) for s in sources]
    start = time.perf_counter()
    for _ in range(n):
        ctx = activation(variables)
        for p in rust:
            p.execute(ctx)
    rust_t = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        act = env.Activation(variables)
        for p in goog:
            p.eval(act)
    goog_t = (time.perf_counter() - start) / n
    print(
        f"100 CEL conditions, shared activation: common-expression-language {rust_t * 1e6:.0f} µs, "
        f"cel-expr-python {goog_t * 1e6:.0f} µs ({goog_t / rust_t:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-google", action="store_true")
    args = parser.parse_args()
    if args.compare_google:
        compare_google()
    scenario("all applicable", TRIGGERS[:1], args.events // 10, args.repeats)
    ratio = scenario("main", TRIGGERS, args.events, args.repeats)
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
