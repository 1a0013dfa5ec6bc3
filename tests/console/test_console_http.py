"""/console over HTTP (no browser): sessions, CSRF, roles as the API allows them, the OAuth landing, rules,
and /docs and /redoc served from packaged assets only."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import update
from temporalio.client import Client

from activities import sync_schedules
from app.demo import load_demo
from hub.auth import Principal, create_key
from hub.runtime import Hub
from hub.sessions import COOKIE, open_session, read_session
from hub.store.base import utcnow
from hub.store.orgs import ApiKey
from tests.conftest import bearer
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET
from tests.console.kit import csrf_of, dead_event, sign_in
from tests.fakes.oauth_server import OAuthFake
from tests.sync.support import seed_connection

STRIPE_MODELS = ["stripe.customers", "stripe.invoices", "stripe.subscriptions"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_load_only_packaged_assets(api: httpx.AsyncClient, page: str) -> None:
    r = await api.get(page)
    assert r.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
    for url in urls:
        asset = await api.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert len(asset.content) > 500_000, url  # the real bundle


async def test_openapi_shows_the_api_key_scheme(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["APIKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert spec["paths"]["/v1/connections"]["get"]["security"] == [{"APIKey": []}]
    assert not any(p.startswith("/console") for p in spec["paths"])


async def test_sign_in_exchanges_the_key_for_a_short_httponly_cookie(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    r = await api.get("/console/connections")
    assert r.status_code == 303 and r.headers["location"] == "/console/signin?next=/console/connections"
    form = await api.get("/console/signin")
    bad = await api.post("/console/signin", data={"api_key": "fqh_nope_nope", "csrf": csrf_of(form.text)})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    r = await api.post("/console/signin", data={"api_key": admin_key, "csrf": csrf_of(form.text),
                                                "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/console"  # no open redirect
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(COOKIE))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attrs and "samesite=lax" in cookie.lower()
    assert "max-age=1800" in cookie.lower() and admin_key not in cookie
    token = api.cookies[COOKIE]
    opened = read_session(hub.vault, token)
    assert opened is not None and opened.expires_at - utcnow().astimezone(opened.expires_at.tzinfo) <= timedelta(minutes=30)
    assert read_session(hub.vault, token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None  # tamper-proof
    page = await api.get("/console/connections")
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_sign_in_and_every_form_need_the_csrf_token(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    form = await api.get("/console/signin")
    assert (await api.post("/console/signin", data={"api_key": admin_key, "csrf": "forged"})).status_code == 403
    await sign_in(api, admin_key)
    event = await dead_event(hub)
    r = await api.post(f"/console/inbox/{event}/replay", data={"csrf": "forged"})
    assert r.status_code == 403
    r = await api.post("/console/validate", content=b"kind: Rule\n", headers={"Content-Type": "application/yaml"})
    assert r.status_code == 403
    assert form.status_code == 200
    detail = (await api.get(f"/v1/webhook-events/{event}", headers=bearer(admin_key))).json()
    assert detail["status"] == "dead" and detail["generation"] == 0  # nothing happened


async def test_a_role_sees_and_does_what_the_api_allows(api: httpx.AsyncClient, hub: Hub) -> None:
    async with hub.db.session() as session:
        viewer = await create_key(session, "acme", "viewer")
        admin = await create_key(session, "acme", "admin")
    event = await dead_event(hub)
    csrf = await sign_in(api, viewer)
    page = await api.get(f"/console/inbox/{event}")
    assert "connection refused (stripe)" in page.text and "Replay" not in page.text
    r = await api.post(f"/console/inbox/{event}/replay", data={"csrf": csrf})  # forged by hand: the API refuses
    assert r.status_code == 303
    page = await api.get(r.headers["location"])
    assert "role &#39;viewer&#39; may not do this" in page.text
    assert (await api.get(f"/v1/webhook-events/{event}", headers=bearer(admin))).json()["status"] == "dead"
    audit = await api.get("/console/audit")  # admin only in the API, so in the console
    assert "role &#39;viewer&#39; may not do this" in audit.text and "<table>" not in audit.text

    api.cookies.clear()
    csrf = await sign_in(api, admin)
    assert "Replay dead-lettered event" in (await api.get(f"/console/inbox/{event}")).text
    r = await api.post(f"/console/inbox/{event}/replay", data={"csrf": csrf})
    page = await api.get(r.headers["location"])
    assert "Replay queued" in page.text
    shown = (await api.get(f"/v1/webhook-events/{event}", headers=bearer(admin))).json()
    assert shown["status"] != "dead" and shown["generation"] == 1
    other = await api.get("/console/inbox", params={"status": "dead"})
    assert event not in other.text  # the filter reaches the API


async def test_another_orgs_objects_are_not_found_and_a_revoked_key_ends_the_session(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    async with hub.db.session() as session:
        other = await create_key(session, "globex", "admin")
    event = await dead_event(hub, org="acme")
    await sign_in(api, other)
    r = await api.get(f"/console/inbox/{event}")
    assert r.status_code == 404 and "not found" in r.text
    async with hub.db.session() as session:
        await session.execute(update(ApiKey).where(ApiKey.org_id == "globex").values(revoked_at=utcnow()))
    r = await api.get("/console/inbox")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/signin")
    token = api.cookies[COOKIE]
    assert (await api.get("/v1/connections", headers=bearer(token))).status_code == 401


async def test_a_session_token_is_a_bearer_for_its_key_only_while_it_lasts(api: httpx.AsyncClient, hub: Hub) -> None:
    async with hub.db.session() as session:
        viewer = await create_key(session, "acme", "viewer")
    principal_id = viewer.split("_")[1]
    token, _ = open_session(hub.vault, Principal(principal_id, "acme", "admin"))  # the role comes from the key
    assert (await api.get("/v1/connections", headers=bearer(token))).status_code == 200
    r = await api.post("/v1/connections", json={"provider": "stripe"}, headers=bearer(token))
    assert r.status_code == 403
    expired, _ = open_session(hub.vault, Principal(principal_id, "acme", "viewer"), now=utcnow() - timedelta(hours=1))
    assert (await api.get("/v1/connections", headers=bearer(expired))).status_code == 401


async def test_the_oauth_callback_brings_a_browser_back_to_the_connection_page(
    api: httpx.AsyncClient, admin_key: str
) -> None:
    with OAuthFake() as idp:
        idp.register_client(CLIENT_ID, CLIENT_SECRET)
        body = {"provider": "generic_oauth2", "name": "crm api",
                "config": {"client_id": CLIENT_ID, "authorization_url": idp.authorization_url,
                           "token_url": idp.token_url, "base_url": idp.api_url},
                "credentials": {"client_secret": CLIENT_SECRET}}  # fmt: skip
        created = (await api.post("/v1/connections", json=body, headers=bearer(admin_key))).json()
        async with httpx.AsyncClient() as browser:
            consent = await browser.get(created["authorization_url"])
        back = {k: v[0] for k, v in parse_qs(urlparse(consent.headers["location"]).query).items()}
        html = {"Accept": "text/html,application/xhtml+xml"}
        r = await api.get("/oauth/generic_oauth2/callback", params=back, headers=html)
        assert r.status_code == 303
        assert r.headers["location"] == f"/console/connections/{created['id']}?authorisation=ok"
        r = await api.get("/oauth/generic_oauth2/callback", params=back, headers=html)  # state used up
        assert r.headers["location"] == "/console/connections?authorisation=failed"
        again = (await api.post(f"/v1/connections/{created['id']}:authorize", headers=bearer(admin_key))).json()
        state = parse_qs(urlparse(again["authorization_url"]).query)["state"][0]
        r = await api.get("/oauth/generic_oauth2/callback", params={"state": state, "error": "access_denied"},
                          headers=html)
        assert r.headers["location"] == f"/console/connections/{created['id']}?authorisation=failed"
    await sign_in(api, admin_key)
    page = await api.get(r.headers["location"])
    assert "Authorisation failed: authorisation refused: access_denied" in page.text
    r = await api.get("/oauth/generic_oauth2/callback", params={"state": "x"})  # API clients keep the problem
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


async def test_rules_editor_validates_saves_diffs_and_dry_runs(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await load_demo(hub, "acme")
    csrf = await sign_in(api, admin_key)
    rules = (await api.get("/v1/rules", headers=bearer(admin_key))).json()["items"]
    name = rules[0]["name"]
    page = await api.get(f"/console/rules/rule/{name}")
    text = re.search(r'<textarea id="yaml"[^>]*>(.*?)</textarea>', page.text, re.S)[1]
    text = html.unescape(text)
    broken = text.replace("spec:\n", "spec:\n  bogus_field: 1\n", 1)
    line = broken.splitlines().index("  bogus_field: 1") + 1
    r = await api.post("/console/validate", content=broken.encode(),
                       headers={"Content-Type": "application/yaml", "X-CSRF-Token": csrf})
    errors = r.json()["errors"]
    assert errors and errors[0]["line"] == line and errors[0]["column"] >= 1
    r = await api.post(f"/console/rules/rule/{name}", data={"csrf": csrf, "text": broken})
    shown = await api.get(r.headers["location"])
    assert f"Not saved — line {line}, column" in shown.text

    edited = re.sub(r"(when: .*)", lambda m: m[1] + " && true", text, count=1)
    assert edited != text
    r = await api.post(f"/console/rules/rule/{name}", data={"csrf": csrf, "text": edited})
    shown = await api.get(r.headers["location"])
    assert "Saved: changed." in shown.text and "<td>" in shown.text
    assert re.search(r"Changes in v2 \(from v1\)", shown.text)
    assert "<code>spec.when</code>" in shown.text

    r = await api.post(f"/console/rules/rule/{name}/disable", data={"csrf": csrf})
    shown = await api.get(r.headers["location"])
    assert "Rule disabled." in shown.text and "v3, disabled" in shown.text and ">Enable<" in shown.text
    assert re.search(r"<code>spec\.enabled</code></th><td>(true|null)</td><td>false</td>", shown.text)
    r = await api.post(f"/console/rules/rule/{name}/enable", data={"csrf": csrf})
    assert "Rule enabled." in (await api.get(r.headers["location"])).text
    assert (await api.get(f"/v1/rules/{name}", headers=bearer(admin_key))).json()["enabled"] is True

    r = await api.post(f"/console/rules/rule/{name}/test", data={"csrf": csrf, "event": '{"type": "stage.entered"}'})
    assert r.status_code == 200 and "would fire" in r.text and name in r.text
    r = await api.post(f"/console/rules/rule/{name}/test", data={"csrf": csrf, "event": "{not json"})
    assert "the event is not JSON" in r.text


async def test_connection_page_shows_syncs_and_pauses_resumes_and_runs_them(
    api: httpx.AsyncClient, hub: Hub, client: Client, admin_key: str
) -> None:
    conn = await seed_connection(hub, "stripe")
    await sync_schedules.ensure_schedules(client, conn, hub.settings.task_queue, run_now=False)
    try:
        csrf = await sign_in(api, admin_key)
        page = await api.get(f"/console/connections/{conn.id}")
        assert page.status_code == 200 and conn.provider in page.text
        assert all(f'<tr data-model="{m}">' in page.text for m in STRIPE_MODELS)
        assert f"/webhooks/stripe/{conn.id}" in page.text and 'data-copy="webhook-url"' in page.text
        r = await api.post(f"/console/connections/{conn.id}/syncs/stripe.customers/pause", data={"csrf": csrf})
        page = await api.get(r.headers["location"])
        assert "stripe.customers: pause requested" in page.text and 'aria-label="Resume stripe.customers"' in page.text
        assert (await sync_schedules.describe(client, "acme", conn.id, "stripe.customers")).paused
        r = await api.post(f"/console/connections/{conn.id}/syncs/stripe.customers/resume", data={"csrf": csrf})
        assert "resume requested" in (await api.get(r.headers["location"])).text
        assert not (await sync_schedules.describe(client, "acme", conn.id, "stripe.customers")).paused
        r = await api.post(f"/console/connections/{conn.id}/syncs/stripe.nope/run", data={"csrf": csrf})
        assert "offers no sync model" in (await api.get(r.headers["location"])).text  # the API's own problem
        progress = (await api.get(f"/console/connections/{conn.id}/syncs.json")).json()
        assert [s["model"] for s in progress["syncs"]] == STRIPE_MODELS
    finally:
        await sync_schedules.remove_schedules(client, conn)
