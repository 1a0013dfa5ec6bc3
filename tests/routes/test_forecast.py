"""``GET /v1/forecast``: the org's opportunities on a pipeline, forecast per month or quarter."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import httpx

from hub.runtime import Hub
from hub.store.opportunities import write_projection
from tests.conftest import bearer

STAGES = ["prospect", "engage", "acquire", "keep"]
PIPELINE = {"name": "peak", "version": 1, "spec": {"spec": {"stages": [{"key": k} for k in STAGES]}}}


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def store_history(hub: Hub, org: str, n: int = 400, seed: int = 7) -> None:
    """Eight opportunities a week through 2025; about half reach Keep (won) after 2–8 weeks."""
    rng = random.Random(seed)
    for i in range(n):
        created = date(2025, 1, 6) + timedelta(days=i * 7 // 8)
        won = created + timedelta(days=rng.randint(14, 56))
        stage = "keep" if rng.random() < 0.5 and won < date(2025, 12, 1) else rng.choice(STAGES[:3])
        visits = [{"idx": 0, "pipeline_name": "peak", "stage": "prospect", "entered_at": at(created),
                   "exited_at": at(won) if stage == "keep" else None}]
        if stage == "keep":
            visits.append({"idx": 1, "pipeline_name": "peak", "stage": "keep", "entered_at": at(won)})
        await hub.db.write(write_projection, {
            "org_id": org, "id": f"o{i}", "workflow_id": f"opportunity/{org}/o{i}", "pipeline_name": "peak",
            "pipeline_version": 1, "stage": stage, "body_hash": "h", "revision": 1, "created_at": at(created),
            "state": {"pipeline": PIPELINE, "opp": {"amount": 2000}},
        }, visits)


async def test_forecast_per_month_and_quarter(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await store_history(hub, "acme")
    h = bearer(admin_key)
    month = await api.get("/v1/forecast", headers=h, params={"pipeline": "peak", "periods": 2, "as_of": "2025-10-01"})
    assert month.status_code == 200, month.text
    body = month.json()
    assert body["as_of"] == "2025-10-01" and body["horizon"] == "month" and body["open_deals"] > 0
    assert [(p["start"], p["end"]) for p in body["periods"]] == [("2025-10-01", "2025-10-31"),
                                                                ("2025-11-01", "2025-11-30")]
    first = body["periods"][0]
    assert first["commit"] == first["low"] <= first["expected"] <= first["high"] == first["best_case"]
    steady = 8 * 31 / 7 * 0.5 * 2000  # wins a month once the pipeline is steady
    assert abs(first["expected"] - steady) / steady < 0.35 and first["pipeline"] > first["expected"]
    quarter = (await api.get("/v1/forecast", headers=h,
                             params={"pipeline": "peak", "horizon": "quarter", "periods": 1, "as_of": "2025-10-01"})).json()
    assert quarter["periods"][0]["end"] == "2025-12-31"
    assert quarter["periods"][0]["expected"] > 2 * first["expected"]


async def test_forecast_problems(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    h = bearer(admin_key)
    missing = await api.get("/v1/forecast", headers=h, params={"pipeline": "peak"})
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert (await api.get("/v1/forecast", headers=h, params={"pipeline": "peak", "horizon": "week"})).status_code == 422
    assert (await api.get("/v1/forecast", headers=h, params={"pipeline": "peak", "periods": 13})).status_code == 422
    await store_history(hub, "globex", n=60)
    assert (await api.get("/v1/forecast", headers=h, params={"pipeline": "peak"})).status_code == 404  # not acme's
    assert (await api.get("/v1/forecast", params={"pipeline": "peak"})).status_code == 401
