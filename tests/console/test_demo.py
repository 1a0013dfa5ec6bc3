"""The demo deals of ``fulqrun-hub run``: registered and moved through PEAK by the HTTP API, rules run."""

from __future__ import annotations

import httpx

from app.demo import load_demo, seed_opportunities
from hub.runtime import Hub
from tests.workflows.opportunity_kit import settle


async def test_demo_deals_move_through_peak_and_run_their_rules(live: str, hub: Hub, admin_key: str) -> None:
    await load_demo(hub, "acme")
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        reached = await seed_opportunities(http, admin_key)
        assert reached == {"demo-initech": "prospect", "demo-globex": "engage", "demo-umbrella": "acquire",
                           "demo-stark": "keep"}  # fmt: skip
        stark = await settle(http, admin_key, "demo-stark")
    assert [(t["from_stage"], t["to_stage"]) for t in stark["history"]] == [
        (None, "prospect"), ("prospect", "engage"), ("engage", "acquire"), ("acquire", "keep")]
    fired = {r["rule"] for r in stark["rule_runs"] if r["fired"]}
    assert "big-deal-to-acquire" in fired  # entered acquire with 240k
