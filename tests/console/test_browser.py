"""The console in a real browser (Debian's Chromium under Playwright): sign in, authorise a connection against
the OAuth fake, edit a rule and see its error at its line, dry-run it, replay a dead-lettered event, move an
opportunity and see its timeline. Every page is screenshotted at 1280×800 and at phone width, checked by
axe-core (the copy vendored in ``axe-playwright-python``) with no serious or critical violation, and must
not scroll sideways on the phone."""

from __future__ import annotations

import re

import httpx
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Page, expect

from app.demo import load_demo, seed_opportunities
from hub.auth import create_key
from hub.runtime import Hub
from tests.conftest import bearer
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET
from tests.console.conftest import ARTIFACTS
from tests.console.kit import dead_event
from tests.fakes.oauth_server import OAuthFake
from tests.workflows.opportunity_kit import settle
from tests.workflows.test_rule_matrix import Receiver

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
AXE = Axe()


async def check(page: Page, name: str) -> None:
    """Screenshots at both widths; no serious accessibility violation; nothing wider than a phone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in VIEWPORTS.items():
        await page.set_viewport_size({"width": width, "height": height})
        await page.screenshot(path=ARTIFACTS / f"{name}-{label}.png", full_page=True)
        results = await AXE.run(page)
        serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name} at {label}: " + results.generate_report()
        if label == "phone":
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} scrolls sideways by {overflow}px on a phone"
    await page.set_viewport_size({"width": 1280, "height": 800})


async def sign_in(page: Page, key: str, start: str = "/console") -> None:
    await page.goto(start)
    await expect(page).to_have_url(re.compile(r"/console/signin"))
    await check(page, "signin")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_sign_in_and_authorise_a_connection(page: Page, live: str, admin_key: str) -> None:
    with OAuthFake() as idp:
        idp.register_client(CLIENT_ID, CLIENT_SECRET)
        body = {"provider": "generic_oauth2", "name": "CRM API",
                "config": {"client_id": CLIENT_ID, "authorization_url": idp.authorization_url,
                           "token_url": idp.token_url, "base_url": idp.api_url},
                "credentials": {"client_secret": CLIENT_SECRET, "webhook_secrets": ["whsec-1"]}}  # fmt: skip
        async with httpx.AsyncClient(base_url=live) as http:
            created = (await http.post("/v1/connections", json=body, headers=bearer(admin_key))).json()
        await sign_in(page, admin_key)
        await expect(page.get_by_role("heading", name="Opportunities", exact=True)).to_be_visible()  # home
        await page.get_by_role("link", name="Connections").click()
        await expect(page.get_by_role("heading", name="Connections")).to_be_visible()
        await check(page, "connections")
        await page.get_by_role("link", name="CRM API").click()
        await expect(page.locator("#status")).to_have_text("pending auth")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == created["webhook_url"]

        await page.get_by_role("button", name="Authorise with generic_oauth2").click()  # consent, callback, back
        await expect(page).to_have_url(re.compile(rf"/console/connections/{created['id']}\?authorisation=ok"))
        await expect(page.get_by_role("status")).to_contain_text("Authorised")
        await expect(page.locator("#status")).to_have_text("active")
        assert [c.form()["grant_type"] for c in idp.calls(r"^/token$", "POST")] == ["authorization_code"]
        await check(page, "connection")


PAID = (b'{"id": "evt_paid", "type": "invoice.paid", "data": {"object": {"object": "invoice", "id": "in_1", '
        b'"amount_paid": 5000, "currency": "eur", "status": "paid"}}}')


async def test_edit_a_rule_see_its_error_at_its_line_and_dry_run_it(page: Page, hub: Hub, admin_key: str) -> None:
    await load_demo(hub, "acme")
    await sign_in(page, admin_key, "/console/rules")
    await check(page, "rules")
    await page.get_by_role("link", name="big-deal-to-acquire").click()
    editor = page.get_by_label("YAML (checked as you type)")
    text = await editor.input_value()
    lines = text.splitlines()
    at = lines.index("spec:") + 1
    await editor.fill("\n".join([*lines[:at], "  stga: acquire", *lines[at:]]))
    await editor.focus()  # then finish typing the misspelt key, as a person would
    await editor.evaluate("el => el.setSelectionRange(el.value.indexOf('stga') + 4, el.value.indexOf('stga') + 4)")
    await page.keyboard.type("e")
    assert "  stgae: acquire" in await editor.input_value()
    errors = page.locator("#yaml-errors li")
    await expect(errors.first).to_contain_text(f"line {at + 1}, column 3", timeout=15000)
    await expect(errors.first).to_contain_text("stgae")
    await errors.first.get_by_role("button").click()  # the caret goes to the error
    caret = await editor.evaluate("el => el.value.slice(0, el.selectionStart).split('\\n').length")
    assert caret == at + 1
    await check(page, "rule-editor-error")

    await page.get_by_role("button", name="Dry-run", exact=True).click()
    await expect(page.locator("#verdict")).to_contain_text("would fire")
    await expect(page.get_by_role("heading", name=re.compile("big-deal-to-acquire v1"))).to_be_visible()
    await check(page, "rule-dry-run")

    # against a recorded event: a Stripe invoice.paid from the inbox, mapped as the workflows map it
    recorded = await dead_event(hub, body=PAID)
    await page.goto("/console/rules/rule/payment-received-keep")
    await page.get_by_label("Or a recorded event from the inbox").select_option(recorded)
    await page.get_by_role("button", name="Dry-run the recorded event").click()
    await expect(page.locator("#verdict")).to_contain_text("1 rule(s) would fire")
    await expect(page.get_by_role("heading", name=re.compile("payment-received-keep v1: fires"))).to_be_visible()
    await expect(page.get_by_role("heading", name=re.compile(f"recorded webhook event {recorded}"))).to_be_visible()
    await expect(page.locator("main pre").last).to_contain_text('"amount_paid": 5000')
    await check(page, "rule-dry-run-recorded")


async def test_replay_a_dead_lettered_event(page: Page, hub: Hub, admin_key: str) -> None:
    event = await dead_event(hub)
    await sign_in(page, admin_key, "/console/inbox")
    await page.get_by_label("Status").select_option("dead")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("cell", name="invoice.paid")).to_be_visible()
    await check(page, "inbox")
    await page.get_by_role("link", name=re.compile(r"\d{4}-")).first.click()
    await expect(page).to_have_url(re.compile(f"/console/inbox/{event}"))
    await expect(page.locator("#event-status")).to_have_text("dead")
    await check(page, "event")
    await page.get_by_role("button", name="Replay dead-lettered event").click()
    await expect(page.get_by_role("status")).to_contain_text("Replay queued")
    await expect(page.locator("#event-status")).not_to_have_text("dead")
    await page.get_by_role("link", name="Audit").click()
    await expect(page.get_by_role("cell", name="webhook_event.replayed")).to_be_visible()
    await check(page, "audit")


async def test_move_an_opportunity_and_see_its_timeline(
    page: Page, live: str, hub: Hub, admin_key: str, task_queue: str
) -> None:
    await load_demo(hub, "acme")
    oid = f"opp-{task_queue}"  # workflow ids outlive the test on the session's Temporal server
    opp = {"name": "Globex expansion", "branch": "emea", "owner_role": "ae", "amount": 120000.0,
           "currency": "EUR", "meddpicc": {"identify_pain": 1, "metrics": 2}}  # fmt: skip
    with Receiver() as crm:  # the CRM's callback endpoint: the signed stage.changed lands here
        async with httpx.AsyncClient(base_url=live, timeout=30) as http:
            r = await http.patch("/v1/orgs/acme", json={"crm_callback_url": f"{crm.url}/crm"}, headers=bearer(admin_key))
            assert r.status_code == 200, r.text
            r = await http.put(f"/v1/opportunities/{oid}", json=opp, headers=bearer(admin_key))
            assert r.status_code in (200, 201), r.text
            items = {i: True for i in r.json()["stages"][0]["checklist"]}
            r = await http.post(f"/v1/opportunities/{oid}/checklist", json={"items": items}, headers=bearer(admin_key))
            assert r.status_code == 200, r.text
        await sign_in(page, admin_key, f"/console/opportunities/{oid}")
        await expect(page.locator("#stage")).to_contain_text("Prospect")
        await expect(page.locator("#crm-callbacks")).to_contain_text("No CRM callbacks yet.")
        await check(page, "opportunity")
        await page.get_by_label("Move to").select_option("engage")
        await page.get_by_label("as sales role").fill("ae")
        await page.get_by_label("why").fill("pain and metrics confirmed")
        await page.get_by_role("button", name="Move").click()
        await expect(page.get_by_role("status")).to_contain_text("Moved to engage")
        await expect(page.locator("#stage")).to_contain_text("Engage")
        key_id = admin_key.split("_")[1]
        await expect(page.locator("#timeline li").first).to_contain_text(f"prospect → engage by console:{key_id} (ae)")
        await expect(page.locator("#timeline li").first).to_contain_text("why: “pain and metrics confirmed”")
        async with httpx.AsyncClient(base_url=live, timeout=30) as http:
            await settle(http, admin_key, oid)
        assert crm.calls("/crm", "POST")
        await page.reload()
        callback = page.locator("#crm-callbacks tbody tr", has_text="stage.changed")
        await expect(callback).to_contain_text("stage.changed")
        await expect(callback).to_contain_text(f"evt_opportunity/acme/{oid}/")
        await expect(callback).to_contain_text("delivered (HTTP 200)")
        await check(page, "opportunity-moved")
    await page.goto(f"/console/runs?opportunity={oid}")
    await expect(page.get_by_role("heading", name="Rule runs")).to_be_visible()
    await check(page, "runs")


async def test_docs_render_with_no_network(page: Page, live: str) -> None:
    elsewhere: list[str] = []

    async def only_the_hub(route) -> None:
        if route.request.url.startswith(live):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_the_hub)
    await page.goto("/docs")
    await expect(page.get_by_role("button", name=re.compile("Authorize"))).to_be_visible(timeout=15000)
    await page.get_by_role("button", name=re.compile("Authorize")).first.click()
    await expect(page.get_by_text("APIKey  (http, Bearer)")).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "docs.png")
    await page.goto("/redoc")
    await expect(page.get_by_role("heading", name=re.compile("FulQrun Hub"))).to_be_visible(timeout=15000)
    await expect(page.get_by_text("APIKey").first).to_be_attached()
    await page.screenshot(path=ARTIFACTS / "redoc.png")
    assert elsewhere == []
    # ReDoc's bundle reaches for its vendor's logo; the page's CSP stops it before it leaves (and says so)
    blocked = [e for e in page.logged_errors if "cdn.redoc.ly" in e and "Content Security Policy" in e]
    assert len(blocked) == 1
    page.logged_errors.remove(blocked[0])


async def test_the_peak_board_shows_the_demo_deals_by_stage(page: Page, live: str, hub: Hub, task_queue: str) -> None:
    org = f"board-{task_queue}"  # the demo's opportunity ids are fixed; workflow ids outlive a test
    await load_demo(hub, org)
    async with hub.db.session() as session:
        key = await create_key(session, org, "viewer")
        admin = await create_key(session, org, "admin")
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        await seed_opportunities(http, admin)
        for oid in ("demo-initech", "demo-globex", "demo-umbrella", "demo-stark"):
            await settle(http, admin, oid)
    await sign_in(page, key, "/console/opportunities")
    columns = {stage: page.get_by_role("region", name=re.compile(f"^{stage}")) for stage in
               ("Prospect", "Engage", "Acquire", "Keep")}  # fmt: skip
    await expect(columns["Keep"].get_by_role("link", name="Stark Industries rollout")).to_be_visible()
    await expect(columns["Acquire"].get_by_role("link", name="Umbrella renewal")).to_be_visible()
    await expect(columns["Prospect"].get_by_role("link", name="Initech pilot")).to_be_visible()
    await expect(columns["Keep"]).to_contain_text("240,000")
    await expect(columns["Keep"]).to_contain_text("AI risk:")
    await expect(page.get_by_role("button", name="Move")).to_have_count(0)  # a viewer moves nothing
    await check(page, "board")
    await columns["Engage"].get_by_role("link", name="Globex expansion").click()
    await expect(page.locator("#timeline li").first).to_contain_text("prospect → engage by demo-ae (ae)")
    await expect(page.get_by_role("button", name="Move")).to_have_count(0)
