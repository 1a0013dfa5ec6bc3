"""Benchmark: a CRM imports its book of business through the API, against raw Temporal starts and Updates.

The real Maven CRM history (``$HUB_SHARED_DATA/maven_crm_sales_opportunities``: 8,800 opportunities with
account, product, sales agent, stage, engage and close dates, value) is imported as a CRM would: each
opportunity registered (``PUT /v1/opportunities/{id}``), then its stage moves replayed
(``POST …/transitions``), mapped onto PEAK with a closed-lost outcome:

    Prospecting -> prospect                       Won  -> prospect, engage, acquire, keep
    Engaging    -> prospect, engage               Lost -> prospect, engage, lost (closed lost)

``--concurrency`` opportunities at a time (the CRM's import workers), each one's calls in order, each
transition with an ``Idempotency-Key`` and a 5xx or timeout retried, as a careful CRM does. The
hub process (API + worker as ``fulqrun-hub run`` builds them) runs on a Temporal dev server started
here, with a PEAK pipeline whose moves have a CEL entry criterion and a role check. Every transition
takes the full path: HTTP, API key, Update with the pipeline check in its validator, then its effects
(rules, AI insight, projection).

The baseline, measured first in the same run on the same server with the same concurrency: as many raw
Temporal workflow starts (a trivial workflow) and Updates (a counter with a validator) as the import makes
calls, sent straight with the Temporal client, the baseline worker in a process of its own.

    .venv/bin/python bench/import.py [--limit 8800] [--concurrency 32] [--in-memory]

Prints opportunities/s, transitions/s and p50/p99 of each call for both, the hub's peak RSS, then checks
the hub's projections: every opportunity's final stage and transitions equal to its history, none failed
or duplicated (waiting up to ``--settle-timeout`` seconds for the effects to finish), and last
``ratio=<x>`` = hub calls/s ÷ raw calls/s (target ≥ 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # a script: the repository root comes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
from sqlalchemy import select

from ai.tabular import read_csv
from bench.transitions import ORG, Trivial, peak_rss_mb, percentile, stack
from hub.store import Database
from hub.store.opportunities import OpportunityRecord

RETRIES = 5  # a 5xx (e.g. 503: the worker did not answer in time) or a timeout is retried, backing off 0.5 s .. 8 s

#: Maven ``deal_stage`` -> the PEAK stages an opportunity passes through (the first is where it is registered).
PATHS = {
    "Prospecting": ["prospect"],
    "Engaging": ["prospect", "engage"],
    "Won": ["prospect", "engage", "acquire", "keep"],
    "Lost": ["prospect", "engage", "lost"],
}


def import_pipeline() -> dict:
    """PEAK plus a closed-lost stage; each move checks a CEL criterion and the actor's role."""
    stages = [("prospect", "Prospect", 0.1), ("engage", "Engage", 0.3), ("acquire", "Acquire", 0.6),
              ("keep", "Keep", 1.0), ("lost", "Closed lost", 0.0)]  # fmt: skip
    moves = [("prospect", "engage"), ("engage", "acquire"), ("acquire", "keep"), ("prospect", "lost"),
             ("engage", "lost"), ("acquire", "lost")]  # fmt: skip
    return {
        "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "peak-import"},
        "spec": {
            "initial": "prospect",
            "stages": [{"key": k, "name": n, "color": "#2563EB", "probability": p} for k, n, p in stages],
            "transitions": [{"from": a, "to": b, "when": "opp.amount >= 0.0 && actor.role != ''",
                             "roles": ["ae", "manager"]} for a, b in moves],
        },
    }  # fmt: skip


@dataclass
class Opportunity:
    """One row of the history: the body the CRM registers and the stages it then moves through."""

    id: str
    body: dict
    path: list[str]
    agent: str


def read_history(limit: int) -> list[Opportunity]:
    """The Maven opportunities (every k-th row when ``limit`` is smaller, so the stage mix is kept)."""
    root = Path(os.environ.get("HUB_SHARED_DATA", "../shared/data")) / "maven_crm_sales_opportunities"
    accounts = {r["account"]: r for r in read_csv(root / "accounts.csv")}
    prices = {r["product"].replace(" ", ""): float(r["sales_price"]) for r in read_csv(root / "products.csv")}
    offices = {r["sales_agent"]: r["regional_office"] for r in read_csv(root / "sales_teams.csv")}
    rows = read_csv(root / "sales_pipeline.csv")
    rows = rows[:: max(1, len(rows) // limit)][:limit]
    out = []
    for r in rows:
        account = accounts.get(r["account"], {})
        body = {
            "name": f"{r['account'] or 'Unassigned account'} - {r['product']}",
            "branch": offices.get(r["sales_agent"], "*").lower(),
            "owner_role": "ae",
            "amount": float(r["close_value"] or prices.get(r["product"].replace(" ", ""), 0.0)),
            "currency": "USD",
            "stage": "prospect",
            "account": {"name": r["account"], "sector": account.get("sector"), "country": account.get("office_location")},
            "sales_agent": r["sales_agent"],
            "product": r["product"],
            "engage_date": r["engage_date"] or None,
        }
        if r["close_date"]:
            body["close_date"] = r["close_date"]
        out.append(Opportunity(r["opportunity_id"], body, PATHS[r["deal_stage"]], r["sales_agent"]))
    return out


@dataclass
class Run:
    """Latencies (seconds) of registrations and transitions (retries included), the wall time, failed calls
    (after their retries) and retries."""

    registrations: list[float] = field(default_factory=list)
    transitions: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: int = 0
    retries: int = 0


async def import_all(
    opps: list[Opportunity], register: Callable[[Opportunity], Awaitable[bool]],
    move: Callable[[Opportunity, int], Awaitable[bool]], out: Run | None = None,
) -> Run:
    """Register and move every opportunity, ``--concurrency`` at a time, each one's calls in order."""
    out, queue = out or Run(), list(reversed(opps))

    async def timed(call: Awaitable[bool], into: list[float]) -> bool:
        began = time.perf_counter()
        ok = await call
        into.append(time.perf_counter() - began)
        out.failures += not ok
        return ok

    async def importer() -> None:
        while queue:
            opp = queue.pop()
            if await timed(register(opp), out.registrations):
                for step in range(1, len(opp.path)):
                    if not await timed(move(opp, step), out.transitions):
                        break

    began = time.perf_counter()
    await asyncio.gather(*(importer() for _ in range(ARGS.concurrency)))
    out.seconds = time.perf_counter() - began
    return out


async def run_raw(client, queue: str, opps: list[Opportunity]) -> Run:
    """The baseline: a trivial workflow started per opportunity, one Update per move."""
    handles = {}

    async def register(opp: Opportunity) -> bool:
        handles[opp.id] = await client.start_workflow(Trivial.run, id=f"raw-{opp.id}", task_queue=queue)
        return True

    async def move(opp: Opportunity, step: int) -> bool:
        return await handles[opp.id].execute_update(Trivial.bump, step) == step

    return await import_all(opps, register, move)


async def run_hub(url: str, key: str, opps: list[Opportunity], run: Run) -> Run:
    """The import through the HTTP API, as a careful CRM does it: each transition carries an ``Idempotency-Key``
    (the Update's id: a retry never moves twice), and a 5xx (kept by no idempotency record) or a transport error
    (timeout, closed connection) is retried (``run.retries``)."""
    limits = httpx.Limits(max_connections=ARGS.concurrency + 4)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:

        async def send(what: str, method: str, path: str, **kwargs: object) -> bool:
            for attempt in range(RETRIES + 1):
                try:
                    response = await http.request(method, path, **kwargs)
                except httpx.TransportError:  # a timeout, or a keep-alive connection the server had just closed
                    response = None
                if response is not None and response.status_code == 200:
                    return True
                retry = response is None or response.status_code >= 500 or (
                    response.status_code == 409 and "still in progress" in response.text)  # fmt: skip
                if not retry or attempt == RETRIES:
                    print(f"  {what}: {response.status_code if response else 'transport error'} "
                          f"{response.text[:200] if response else ''}", file=sys.stderr)  # fmt: skip
                    return False
                run.retries += 1
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
            return False

        async def register(opp: Opportunity) -> bool:
            return await send(f"PUT {opp.id}", "PUT", f"/v1/opportunities/{opp.id}", json=opp.body)

        async def move(opp: Opportunity, step: int) -> bool:
            body = {"to": opp.path[step], "actor": {"id": opp.agent, "role": "ae"}}
            return await send(f"{opp.id} -> {opp.path[step]}", "POST", f"/v1/opportunities/{opp.id}/transitions",
                              json=body, headers={"Idempotency-Key": f"import-{opp.id}-{step}"})  # fmt: skip

        return await import_all(opps, register, move, run)


async def verify(database_url: str, opps: list[Opportunity], timeout: float) -> tuple[int, int, float]:
    """Wait for the projections: (opportunities whose final stage and transitions equal their history,
    opportunities with a duplicated transition, seconds waited)."""
    db, began = Database(database_url), time.perf_counter()
    expected = {o.id: o.path for o in opps}
    try:
        while True:
            async with db.session() as session:
                rows = (await session.scalars(select(OpportunityRecord).where(OpportunityRecord.org_id == ORG))).all()
            paths = {r.id: [h["to_stage"] for h in r.state.get("history", [])] for r in rows}
            equal = sum(paths.get(i) == p for i, p in expected.items())
            duplicated = sum(len(paths.get(i, [])) > len(p) for i, p in expected.items())
            waited = time.perf_counter() - began
            if equal == len(expected) or duplicated or waited > timeout:
                return equal, duplicated, waited
            await asyncio.sleep(1)
    finally:
        await db.dispose()


def report(name: str, opps: list[Opportunity], run: Run) -> float:
    def figures(latencies: list[float]) -> str:
        if not latencies:
            return "none"
        return f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * percentile(latencies, 0.99):.1f} ms"

    calls = len(run.registrations) + len(run.transitions)
    print(f"{name}: {len(opps)} opportunities and {len(run.transitions)} transitions in {run.seconds:.1f} s = "
          f"{len(opps) / run.seconds:.1f} opportunities/s, {len(run.transitions) / run.seconds:.1f} transitions/s; "
          f"register {figures(run.registrations)}; transition {figures(run.transitions)}; failed {run.failures}, "
          f"retried {run.retries}")  # fmt: skip
    return calls / run.seconds


async def drive() -> None:
    opps = read_history(ARGS.limit)
    mix = {stage: sum(o.path == path for o in opps) for stage, path in PATHS.items()}
    async with stack(import_pipeline(), ARGS.in_memory) as s:
        print(f"Temporal dev server ({s.store}); {len(opps)} Maven opportunities {mix}, "
              f"{sum(len(o.path) - 1 for o in opps)} transitions, {ARGS.concurrency} at a time")  # fmt: skip
        raw_rate = report("raw Temporal (start + Updates, trivial workflow)", opps,
                          await run_raw(s.client, s.queue, opps))  # fmt: skip
        hub = await run_hub(s.url, s.key, opps, Run())
        hub_rate = report("hub (PUT + POST transitions through the API)", opps, hub)
        equal, duplicated, waited = await verify(s.database_url, opps, ARGS.settle_timeout)
        print(f"hub peak RSS {peak_rss_mb(s.hub_pid):.0f} MiB")
        print(f"projections after {waited:.1f} s: final stage and transitions equal to history for {equal}/{len(opps)}; "
              f"duplicated {duplicated}; failed calls {hub.failures}")  # fmt: skip
        print(f"ratio={hub_rate / raw_rate:.2f}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=8800, help="opportunities to import (a sample of the history)")
    parser.add_argument("--concurrency", type=int, default=32, help="opportunities imported at a time")
    parser.add_argument("--settle-timeout", type=float, default=300, help="seconds to wait for the projections")
    parser.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of file-backed")
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = parse()
    asyncio.run(drive())
