"""The Maven proof through the API: a slice of Maven's opportunities imported as a CRM would (registered at their
stage, dated with ``engaged_at``/``closed_at``, lost ones closed lost with a reason), then the org retrained from
the hub's own history: the model it would promote is never worse than the base rate on the time-ordered holdout.

Slow (``-m slow``): ``MAVEN_SLICE`` (default 600) opportunities, every k-th row so the stage mix is kept, on SQLite
with the API and worker in process. ``bench/maven_retrain.py`` imports all 8,800 into PostgreSQL over HTTP."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.ai_retraining import AiRetraining, opportunity_outcomes
from activities.ai_types import RetrainInput
from hub.runtime import Hub
from tests.ai.maven import CLOSE_LOST, PIPELINE, body, maven_rows
from tests.conftest import bearer, shared_data
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


async def test_maven_imported_through_the_api_never_promotes_worse_than_the_base_rate(
    api: httpx.AsyncClient, hub: Hub, client: Client, task_queue: str, admin_key: str
) -> None:
    rows = maven_rows(shared_data("maven_crm_sales_opportunities"), int(os.environ.get("MAVEN_SLICE", "600")))
    h = bearer(admin_key)
    await apply(hub, PIPELINE)
    assert (await api.patch("/v1/orgs/acme", json={"flags": {"ai.insights": False}}, headers=h)).status_code == 200
    gate = asyncio.Semaphore(8)

    async def send(method: str, path: str, payload: dict) -> httpx.Response:
        """As a careful CRM: a 503 (the worker did not answer in time) is retried, backing off."""
        for attempt in range(6):
            answer = await api.request(method, path, json=payload, headers=h)
            if answer.status_code != 503:
                return answer
            await asyncio.sleep(0.5 * 2**attempt)
        return answer

    async def load(row: dict) -> None:
        async with gate:
            put = await send("PUT", f"/v1/opportunities/{row['opportunity_id']}", body(row))
            assert put.status_code == 200, put.text
            if row["deal_stage"] == "Lost":
                lost = await send("POST", f"/v1/opportunities/{row['opportunity_id']}:close-lost", CLOSE_LOST)
                assert lost.status_code == 200 or "already_closed" in lost.text, lost.text  # a retry after it closed

    lost = sum(r["deal_stage"] == "Lost" for r in rows)
    async with main_worker(hub, client, task_queue, AiStandIn()):
        await asyncio.gather(*(load(r) for r in rows))
        for _ in range(240):  # the projections of the closes are written by the workflows' effects
            async with hub.db.session() as session:
                outcomes = await opportunity_outcomes(session, "acme")
            if len(outcomes) == len(rows) and sum(o.won is False for o in outcomes) == lost:
                break
            await asyncio.sleep(1.0)  # each look reads every projection: not too often (SQLite writers wait)
    counts = Counter("open" if o.won is None else "won" if o.won else "lost" for o in outcomes)
    wanted = Counter({"Won": "won", "Lost": "lost"}.get(r["deal_stage"], "open") for r in rows)
    assert counts == wanted

    result = await ActivityEnvironment().run(AiRetraining(hub).retrain, RetrainInput(org_id="acme"))
    deals = result.outcomes["deals"]
    print(f"maven slice {len(rows)} ({dict(counts)}): {deals}")
    assert deals["window_rows"] > 0 and deals["window_from"] <= deals["window_until"]
    assert not deals["promoted"] or deals["challenger_brier"] < deals["base_rate_brier"]
    assert deals["challenger_brier"] >= deals["base_rate_brier"] - 1e-3  # Maven has no win/loss signal to find
