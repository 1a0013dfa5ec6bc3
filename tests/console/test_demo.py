"""The demo deals of ``fulqrun-hub run``: registered and moved through PEAK by the HTTP API, rules run."""

from __future__ import annotations

import re

import httpx

from app.demo import load_demo, seed_opportunities
from hub.auth import create_key
from hub.runtime import Hub
from tests.console.kit import sign_in
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


async def test_rule_runs_page_shows_each_action_and_retries_a_failed_one(live: str, hub: Hub, task_queue: str) -> None:
    org = f"runs-{task_queue}"  # the demo's opportunity ids are fixed; workflow ids outlive a test
    await load_demo(hub, org)
    async with hub.db.session() as session:
        admin_key = await create_key(session, org, "admin")
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        await seed_opportunities(http, admin_key)
        await settle(http, admin_key, "demo-stark")
        csrf = await sign_in(http, admin_key)
        page = await http.get("/console/runs", params={"rule": "big-deal-to-acquire", "opportunity": "demo-stark"})
        assert "big-deal-to-acquire v1 on stage.entered" in page.text
        assert "<code>slack.post_message</code>" in page.text and "#deals" in page.text  # params shown
        retry = re.search(r'action="(/console/runs/\d+/actions/\d+/retry)"', page.text)
        assert retry, "a failed action offers a retry"
        r = await http.post(retry[1], data={"csrf": csrf})
        shown = await http.get(r.headers["location"])
        assert "Retry started (attempt 2)." in shown.text
        audit = await http.get("/console/audit", params={"action": "rule_run.action_retried"})
        assert "rule_run.action_retried" in audit.text and admin_key.split("_")[1] in audit.text
