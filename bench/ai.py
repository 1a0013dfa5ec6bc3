"""Benchmark: AI scoring latency and throughput, next-action latency with and without (fake) OpenAI.

Trains the lead model on X Education and the deal model on Maven (``HUB_SHARED_DATA``; synthetic
histories from ``tests/ai/synthetic.py`` when absent), then measures:

* lead scoring: p50 for one lead with its factors (what ``PUT /v1/leads/{id}`` does), batch throughput
  with factors (``ai score-leads``) and without (``LeadModel.predict``);
* deal risk: p50 for one opportunity (model + rules), batch throughput of the deal model;
* next best action: p50 of the local list, and p50 refined through ``openai.complete_json`` (official
  SDK, real HTTP) against the local OpenAI fake answering at once.

    .venv/bin/python bench/ai.py [--repeat 200]

Baseline, measured in the same run: the local next-action p50 (no OpenAI). The last line is
``ratio=<x>``: next-action p50 with the fake OpenAI / that baseline — the cost of the LLM round trip
itself, without the model's own thinking time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx

from ai.deals import DealMapping, deals_from_rows, read_deals, train_deals
from ai.leads import train_leads
from ai.next_action import recommend
from ai.risk import assess
from ai.tabular import read_csv
from connectors.openai import CompleteJson, complete_json
from hub.settings import Settings
from tests.ai.synthetic import deal_rows, lead_rows
from tests.fakes.context import action_context
from tests.fakes.openai_server import OpenAIFake

NOW = datetime(2017, 12, 31, tzinfo=UTC)
OPP = {
    "name": "Bench deal", "amount": 4821.0, "currency": "USD", "close_date": "2018-01-20", "product": "GTXPro",
    "owner": {"name": "Darcel Schlecht"}, "account": {"name": "Isdom"}, "created_at": "2017-11-01",
    "meddpicc": {"identify_pain": 2, "metrics": 1, "champion": 1, "economic_buyer": 0},
    "contacts": [{"email": "champ@example.com", "role": "champion"}],
}
EVENTS = [
    {"type": "contract.sent", "data": {}, "at": (NOW - timedelta(days=9)).isoformat()},
    {"type": "call.recorded", "data": {"objections": ["price"], "participants": [{"email": "champ@example.com"}]},
     "at": (NOW - timedelta(days=16)).isoformat()},
]


def p50_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


async def atimed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
    return out


def refined_answer(body: dict) -> dict:
    import json

    candidates = json.loads(body["messages"][-1]["content"])["candidates"]
    return {"actions": [{"code": c["code"], "title": c["title"], "reasoning": c["reasoning"]} for c in candidates]}


async def main(repeat: int) -> None:
    shared = Settings().shared_data
    leads_csv = shared / "lead_scoring_x_education" / "Leads.csv"
    deals_csv = shared / "maven_crm_sales_opportunities" / "sales_pipeline.csv"
    if leads_csv.exists() and deals_csv.exists():
        leads = read_csv(leads_csv)
        deals, mapping = read_deals(deals_csv)
        source = f"real data ({shared})"
    else:
        leads = lead_rows(3000)
        mapping = DealMapping(price_list={"GTX Pro": 4821})
        deals = deals_from_rows(deal_rows(3000), mapping)
        source = "synthetic data (shared data not found)"
    started = time.perf_counter()
    lead_model = train_leads(leads)
    lead_train = time.perf_counter() - started
    started = time.perf_counter()
    deal_model = train_deals(deals, mapping)
    deal_train = time.perf_counter() - started
    print(f"data: {source}; training: leads {lead_train:.1f}s ({len(leads)} rows), deals {deal_train:.1f}s "
          f"({deal_model.metrics['deals']} closed deals)")

    one = leads[:1]
    lead_p50 = p50_ms(timed(lambda: lead_model.score_records(one), repeat))
    started = time.perf_counter()
    lead_model.score_records(leads)
    with_factors = len(leads) / (time.perf_counter() - started)
    started = time.perf_counter()
    lead_model.predict(leads)
    without_factors = len(leads) / (time.perf_counter() - started)
    print(f"lead score p50 (one lead, with factors): {lead_p50:.2f} ms")
    print(f"lead batch throughput: {with_factors:,.0f} leads/s with factors, {without_factors:,.0f} leads/s without")

    deal_p50 = p50_ms(timed(lambda: assess(OPP, "engage", EVENTS, NOW, deal_model, "bench"), repeat))
    open_deals = [d for d in deals if d.won is None] or deals
    started = time.perf_counter()
    deal_model.score(open_deals, [NOW.date()] * len(open_deals))
    deal_rate = len(open_deals) / (time.perf_counter() - started)
    print(f"deal risk p50 (one opportunity, model + rules): {deal_p50:.2f} ms")
    print(f"deal model batch throughput: {deal_rate:,.0f} opportunities/s")

    async def local() -> None:
        await recommend(OPP, "engage", {}, EVENTS, NOW, deal_model)

    local_p50 = p50_ms(await atimed(local, repeat))
    with OpenAIFake(answer=refined_answer) as fake:
        async with httpx.AsyncClient() as http:
            ctx = action_context("openai", fake.url + "/v1", http)

            async def complete(params: dict) -> dict:
                return await complete_json(ctx, CompleteJson.model_validate(params))

            async def llm() -> None:
                result = await recommend(OPP, "engage", {}, EVENTS, NOW, deal_model, complete=complete)
                assert result["provenance"]["fallback"] is None, result["provenance"]["fallback"]

            llm_p50 = p50_ms(await atimed(llm, max(20, repeat // 4)))
    print(f"next action p50: {local_p50:.2f} ms local (baseline), {llm_p50:.2f} ms refined via the fake OpenAI")
    print(f"ratio={llm_p50 / local_p50:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    asyncio.run(main(parser.parse_args().repeat))
