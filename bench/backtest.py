"""Benchmark: backtest a rule version against 10,000 recorded events through the API.

A temporary SQLite hub database is seeded with history derived from real data (``$HUB_SHARED_DATA``):

* the Maven CRM opportunities (``maven_crm_sales_opportunities``, read as ``bench/import.py`` reads them) as
  projected opportunities whose recorded transitions follow their history onto PEAK (registration in Prospect
  two weeks before ``engage_date``, Engage on it, Acquire half-way, Keep or closed lost on ``close_date``);
* Stripe's ``invoice.paid`` fixture (``webhooks/stripe``) delivered to won opportunities (their recorded
  ``payment.received`` events, amount = the close value) and ``invoice.payment_failed`` as org-level inbox rows.

Then ``POST /v1/rules/{name}:backtest`` (the app in process over ASGI, evaluation in ``hub.bounded``'s worker
processes) tests version 2 of a ``stage.entered`` rule (CEL condition, two templated actions) against version 1
over the whole window, streamed as NDJSON. The baseline, measured in the same run: the same history gathered
and evaluated in this process with ``rules.backtest.evaluate_chunk`` directly (no HTTP, no worker processes).

    .venv/bin/python bench/backtest.py [--events 10000]

Prints both rates, ``ratio=<api/baseline>`` and last ``events_per_s=<x>`` (recorded events per second through
the API).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

if not __package__:  # a script: the repository root comes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx

from activities.opportunity_types import OpportunityState, PinnedPipeline, TransitionRecord
from hub.auth import create_key
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.store.inbox import WebhookEvent
from hub.store.opportunities import OpportunityRecord
from hub.store.resources import apply_resource
from hub.vault import Vault, new_key_line
from rules.backtest import Accumulator, backtest_document, evaluate_chunk, triggers
from webhooks.backtest import CHUNK, recorded

ORG = "bench"
SINCE, UNTIL = datetime(2016, 1, 1, tzinfo=UTC), datetime(2018, 6, 1, tzinfo=UTC)
STRIPE = Path(os.environ.get("HUB_SHARED_DATA", "../shared/data")) / "webhooks" / "stripe"


def rule(version: int) -> dict:
    """Version 1 announces deals from 5,000 in Engage and Acquire; version 2 from 1,000, and adds a task."""
    threshold = 5000.0 if version == 1 else 1000.0
    do = [{"slack.post_message": {"channel": "#deals", "text": "{{ opp.name }} entered {{ stage }} ({{ opp.amount }})"}}]
    if version == 2:
        do.append({"opportunity.add_task": {"title": "Plan {{ opp.account.name }} in {{ stage }}", "due_in_days": 3}})
    return {"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": "announce"},
            "spec": {"on": "stage.entered", "when": f"opp.amount >= {threshold} && stage in ['engage', 'acquire']",
                     "do": do}}  # fmt: skip


def _day(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None


async def seed(db: Database, events: int) -> dict[str, int]:
    """Opportunities with their transitions, delivered payments and org-level inbox rows: ``events`` in all."""
    history = importlib.import_module("bench.import")
    pipeline_doc = history.import_pipeline()
    paid = json.loads((STRIPE / "invoice.paid.json").read_text())
    failed = (STRIPE / "invoice.payment_failed.json").read_bytes()
    payments_target = inbox_target = events // 20
    transitions_target = events - payments_target - inbox_target
    counts = {"transitions": 0, "payments": 0, "inbox": 0, "opportunities": 0}
    async with db.session() as session:
        await apply_resource(session, ORG, pipeline_doc, actor="bench")
        for version in (1, 2):
            await apply_resource(session, ORG, rule(version), actor="bench")
        pinned = PinnedPipeline(name="peak-import", version=1, spec=pipeline_doc)
        for opp in history.read_history(8800):
            if counts["transitions"] >= transitions_target:
                break
            engaged = _day(opp.body.get("engage_date")) or datetime(2017, 6, 1, tzinfo=UTC)
            closed = _day(opp.body.get("close_date")) or engaged + timedelta(days=30)
            times = {"prospect": engaged - timedelta(days=14), "engage": engaged, "acquire": engaged + (closed - engaged) / 2,
                     "keep": closed, "lost": closed}  # fmt: skip
            path = opp.path[: transitions_target - counts["transitions"]]
            moves = [TransitionRecord(seq=i + 1, from_stage=path[i - 1] if i else None, to_stage=stage,
                                      at=times[stage], pipeline_version=1) for i, stage in enumerate(path)]  # fmt: skip
            recorded_events = []
            if path[-1] == "keep" and counts["payments"] < payments_target:
                invoice = {**paid["data"]["object"], "amount_paid": int(opp.body["amount"] * 100),
                           "metadata": {"opportunity_id": opp.id}}  # fmt: skip
                recorded_events.append({"type": "payment.received", "data": {"invoice": invoice},
                                        "source": {"provider": "stripe", "event_id": f"evt_{opp.id}"},
                                        "at": (closed + timedelta(days=1)).isoformat()})  # fmt: skip
                counts["payments"] += 1
            state = OpportunityState(org_id=ORG, opportunity_id=opp.id, opp=opp.body, body_hash="", pipeline=pinned,
                                     stage=path[-1], history=moves, events=recorded_events, created_at=moves[0].at,
                                     updated_at=closed + timedelta(days=1))  # fmt: skip
            session.add(OpportunityRecord(org_id=ORG, id=opp.id, workflow_id=f"opportunity/{ORG}/{opp.id}",
                                          pipeline_name="peak-import", pipeline_version=1, stage=state.stage,
                                          body_hash="", revision=1, state=state.model_dump(mode="json"),
                                          created_at=state.created_at, updated_at=state.updated_at,
                                          branch=opp.body["branch"]))  # fmt: skip
            counts["transitions"] += len(moves)
            counts["opportunities"] += 1
        for i in range(events - counts["transitions"] - counts["payments"]):
            at = SINCE + timedelta(days=300, minutes=7 * i)
            session.add(WebhookEvent(org_id=ORG, connection_id="con_bench", provider="stripe", event_id=f"evt_failed_{i}",
                                     event_type="invoice.payment_failed", status="ignored", body=failed,
                                     content_type="application/json", received_at=at, available_at=at))  # fmt: skip
            counts["inbox"] += 1
    return counts


async def through_api(hub: Hub, key: str) -> tuple[float, dict, int]:
    """One streamed backtest of version 2 against version 1: seconds, the report, progress lines."""
    from api import create_app

    transport = httpx.ASGITransport(app=create_app(hub))
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/x-ndjson"}
    body = {"version": 2, "compare_to": 1, "since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.bench", timeout=600) as http:
        warm = {**body, "until": "2016-10-25T00:00:00Z"}  # a few events: starts hub.bounded's worker processes
        assert (await http.post("/v1/rules/announce:backtest", json=warm, headers=headers)).status_code == 200
        began = time.perf_counter()
        answer = await http.post("/v1/rules/announce:backtest", json=body, headers=headers)
        seconds = time.perf_counter() - began
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert answer.status_code == 200 and "report" in lines[-1], answer.text[-2000:]
    return seconds, lines[-1]["report"], len(lines) - 1


async def in_process(db: Database) -> tuple[float, dict]:
    """The baseline: the same history gathered and evaluated here, no HTTP, no worker processes."""
    docs = [backtest_document(rule(v), v) for v in (2, 1)]
    docs[0]["metadata"]["org"] = docs[1]["metadata"]["org"] = ORG
    began = time.perf_counter()
    async with db.session() as session:
        history = await recorded(session, ORG, SINCE, UNTIL, triggers(*docs))
    totals = Accumulator(comparing=True)
    items = history.items
    for start in range(0, len(items), CHUNK):
        totals.add(evaluate_chunk(docs[0], docs[1], items[start : start + CHUNK]))
    return time.perf_counter() - began, {"events": history.count, **totals.report(100)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", vault_keys=new_key_line("b1"))
        db = Database(f"sqlite+aiosqlite:///{tmp}/hub.db")
        await db.migrate()
        async with db.session() as session:
            key = await create_key(session, ORG, "viewer")
        counts = await seed(db, args.events)
        print(f"seeded: {counts}")
        hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
        base_seconds, base = await in_process(db)
        seconds, report, progress = await through_api(hub, key)
        await db.dispose()
    assert report["events"] == base["events"] == args.events, (report["events"], base["events"])
    assert (report["fired"], report["compare"]["fired"]) == (base["fired"], base["compare"]["fired"])
    print(f"events={report['events']} evaluated={report['evaluated']} fired v2={report['fired']} "
          f"v1={report['compare']['fired']} only v2={report['compare']['only_version']['count']} "
          f"changed actions={report['compare']['changed_actions']['count']} progress lines={progress}")  # fmt: skip
    print(f"baseline (in process, no API, no worker processes): {base_seconds:.2f} s, "
          f"{base['events'] / base_seconds:.0f} events/s")
    print(f"through the API (NDJSON, hub.bounded): {seconds:.2f} s, {report['events'] / seconds:.0f} events/s")
    print(f"ratio={base_seconds / seconds:.2f}")
    print(f"events_per_s={report['events'] / seconds:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
