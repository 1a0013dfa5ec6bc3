"""Connections API: OAuth2 code + PKCE through a real local authorization server, state binding and expiry,
api_key ready at once, client credentials via msal and the DocuSign JWT grant against local TLS fakes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import select, update
from temporalio.client import Client

from connectors.catalogue import catalogue
from hub.auth import create_key
from hub.runtime import Hub
from hub.store.base import utcnow
from hub.store.connections import Connection
from hub.store.oauth import OAuthState, load_secrets
from hub.store.orgs import AuditEntry
from tests.conftest import bearer
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, connection_workers
from tests.fakes.oauth_server import OAuthFake, rsa_key_pair, self_signed_cert


@pytest.fixture
def idp() -> Iterator[OAuthFake]:
    with OAuthFake() as fake:
        fake.register_client(CLIENT_ID, CLIENT_SECRET)
        yield fake


@pytest.fixture
def tls_idp(tmp_path: Path) -> Iterator[tuple[OAuthFake, str]]:
    """The OAuth fake over https with a self-signed certificate; (fake, its certificate as PEM text)."""
    cert, key = self_signed_cert(tmp_path)
    fake = OAuthFake().start(cert, key)
    try:
        yield fake, Path(cert).read_text()  # a connection's ca_bundle is PEM text
    finally:
        fake.stop()


def _generic(idp: OAuthFake) -> dict:
    return {
        "provider": "generic_oauth2", "name": "crm api",
        "config": {"client_id": CLIENT_ID, "authorization_url": idp.authorization_url, "token_url": idp.token_url,
                   "base_url": idp.api_url, "scopes": ["read", "write"]},
        "credentials": {"client_secret": CLIENT_SECRET, "webhook_secrets": ["whsec-new", "whsec-old"]},
    }


async def _consent(idp: OAuthFake, authorization_url: str) -> dict[str, str]:
    """The user approves at the provider, which redirects back with code and state."""
    async with httpx.AsyncClient() as browser:
        r = await browser.get(authorization_url)
    assert r.status_code == 302, r.text
    location = urlparse(r.headers["location"])
    assert location.path == "/oauth/generic_oauth2/callback"
    return {k: v[0] for k, v in parse_qs(location.query).items()}


async def test_oauth2_code_flow_with_pkce_activates_the_connection_and_never_shows_secrets(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, idp: OAuthFake
) -> None:
    r = await api.post("/v1/connections", json=_generic(idp), headers=bearer(admin_key))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "pending_auth" and created["secrets"] == ["client_secret", "webhook_secrets"]
    query = parse_qs(urlparse(created["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["read write"]
    assert query["redirect_uri"] == ["http://127.0.0.1:8000/oauth/generic_oauth2/callback"]
    back = await _consent(idp, created["authorization_url"])

    r = await api.get("/oauth/generic_oauth2/callback", params=back)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active" and r.json()["next_refresh_at"] is not None
    exchange = idp.calls(r"^/token$", "POST")[0].form()
    assert exchange["grant_type"] == "authorization_code" and len(exchange["code_verifier"]) >= 43

    r = await api.get(f"/v1/connections/{created['id']}", headers=bearer(admin_key))
    shown = r.json()
    assert shown["status"] == "active" and shown["last_error"] is None
    assert shown["webhook_url"].endswith(f"/webhooks/generic_oauth2/{created['id']}")
    async with hub.db.session() as s:
        stored = await load_secrets(s, hub.vault, created["id"])
    assert stored["webhook_secrets"] == "whsec-new\nwhsec-old"
    for text in (created, shown, (await api.get("/v1/connections", headers=bearer(admin_key))).json()):
        for value in stored.values():
            assert value not in str(text)

    # the state was single-use
    r = await api.get("/oauth/generic_oauth2/callback", params=back)
    assert r.status_code == 400 and "state" in r.json()["detail"]


async def test_state_is_bound_to_provider_expires_and_other_orgs_never_see_the_connection(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, idp: OAuthFake
) -> None:
    created = (await api.post("/v1/connections", json=_generic(idp), headers=bearer(admin_key))).json()
    back = await _consent(idp, created["authorization_url"])
    r = await api.get("/oauth/slack/callback", params=back)  # another provider's callback
    assert r.status_code == 400
    r = await api.get("/oauth/generic_oauth2/callback", params={"state": "forged", "code": back["code"]})
    assert r.status_code == 400

    again = (await api.post(f"/v1/connections/{created['id']}:authorize", headers=bearer(admin_key))).json()
    back = await _consent(idp, again["authorization_url"])
    async with hub.db.session() as s:
        await s.execute(update(OAuthState).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await api.get("/oauth/generic_oauth2/callback", params=back)
    assert r.status_code == 400 and "expired" in r.json()["detail"]

    async with hub.db.session() as s:
        other = await create_key(s, "globex", "admin")
    assert (await api.get(f"/v1/connections/{created['id']}", headers=bearer(other))).status_code == 404
    assert (await api.delete(f"/v1/connections/{created['id']}", headers=bearer(other))).status_code == 404
    assert (await api.get("/v1/connections", headers=bearer(other))).json()["items"] == []


async def test_refused_consent_is_recorded_as_last_error(
    api: httpx.AsyncClient, admin_key: str, idp: OAuthFake
) -> None:
    created = (await api.post("/v1/connections", json=_generic(idp), headers=bearer(admin_key))).json()
    state = parse_qs(urlparse(created["authorization_url"]).query)["state"][0]
    r = await api.get("/oauth/generic_oauth2/callback", params={"state": state, "error": "access_denied"})
    assert r.status_code == 400 and "access_denied" in r.json()["detail"]
    shown = (await api.get(f"/v1/connections/{created['id']}", headers=bearer(admin_key))).json()
    assert shown["status"] == "pending_auth" and "access_denied" in shown["last_error"]


async def test_validation_names_every_problem(api: httpx.AsyncClient, admin_key: str) -> None:
    r = await api.post("/v1/connections", json={"provider": "nope"}, headers=bearer(admin_key))
    assert r.status_code == 422 and "unknown provider 'nope'" in r.json()["detail"]
    r = await api.post("/v1/connections", headers=bearer(admin_key), json={
        "provider": "microsoft", "config": {"client_secret": "x", "base_url": "ftp://x"},
        "credentials": {"api_key": "k"},
    })
    errors = r.json()["errors"]
    assert r.status_code == 422
    assert "config.client_secret looks secret: send it in credentials" in errors
    assert "config.base_url must be an http(s) URL" in errors
    assert "config.tenant_id is required for microsoft" in errors
    assert any(e.startswith("credentials.api_key is not used by client_credentials") for e in errors)
    assert "credentials.client_secret is required for client_credentials" in errors


async def test_a_connections_own_rate_limit_is_checked(api: httpx.AsyncClient, admin_key: str) -> None:
    r = await api.post("/v1/connections", headers=bearer(admin_key), json={
        "provider": "stripe", "config": {"rate_limit": {"per_second": 0}}, "credentials": {"api_key": "sk_x"}})
    assert r.status_code == 422 and "rate_limit" in r.text and "per_second" in r.text
    r = await api.post("/v1/connections", headers=bearer(admin_key), json={
        "provider": "stripe", "config": {"rate_limit": {"per_second": 100}}, "credentials": {"api_key": "sk_x"}})
    assert r.status_code == 201 and r.json()["config"]["rate_limit"] == {"per_second": 100}


async def test_api_key_connection_is_active_at_once_and_delete_erases_it(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    body = {"provider": "stripe", "credentials": {"api_key": "sk_test_canary", "webhook_secrets": "whsec_1"}}
    created = (await api.post("/v1/connections", json=body, headers=bearer(admin_key))).json()
    assert created["status"] == "active" and created["auth_mode"] == "api_key"
    assert created["base_url"] == "https://api.stripe.com" and "sk_test_canary" not in str(created)
    second = (await api.post("/v1/connections", json=body, headers=bearer(admin_key))).json()
    page = (await api.get("/v1/connections?limit=1&provider=stripe", headers=bearer(admin_key))).json()
    assert [c["id"] for c in page["items"]] == [min(created["id"], second["id"])] and page["next_cursor"]
    rest = (await api.get(f"/v1/connections?limit=1&cursor={page['next_cursor']}", headers=bearer(admin_key))).json()
    assert [c["id"] for c in rest["items"]] == [max(created["id"], second["id"])] and rest["next_cursor"] is None

    assert (await api.delete(f"/v1/connections/{created['id']}", headers=bearer(admin_key))).status_code == 204
    assert (await api.get(f"/v1/connections/{created['id']}", headers=bearer(admin_key))).status_code == 404
    async with hub.db.session() as s:
        assert await load_secrets(s, hub.vault, created["id"]) == {}
        actions = (await s.scalars(select(AuditEntry.action).where(AuditEntry.target == f"connection/{created['id']}"))).all()
    assert actions == ["connection.created", "connection.deleted"]


async def test_microsoft_client_credentials_via_msal_is_ready_at_once(
    api: httpx.AsyncClient, client: Client, hub: Hub, admin_key: str, tls_idp: tuple[OAuthFake, str]
) -> None:
    idp, ca = tls_idp
    idp.register_client("graph-app", CLIENT_SECRET)
    body = {
        "provider": "microsoft", "name": "contoso",
        "config": {"tenant_id": "contoso", "client_id": "graph-app", "ca_bundle": ca,
                   "token_url": f"{idp.url}/contoso/oauth2/v2.0/token", "base_url": f"{idp.url}/api"},
        "credentials": {"client_secret": CLIENT_SECRET},
    }
    async with connection_workers(client, hub, provider_prefix="sharepoint"):
        r = await api.post("/v1/connections", json=body, headers=bearer(admin_key))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "active", created["last_error"]
    assert created["scopes"] == ["https://graph.microsoft.com/.default"]
    assert idp.token_calls == ["client_credentials"]
    assert idp.calls(r"/contoso/oauth2/v2.0/token")[0].form()["scope"].startswith("https://graph.microsoft.com/")
    async with hub.db.session() as s:
        conn = await s.get(Connection, created["id"])
        assert conn.token_version == 1 and conn.next_refresh_at is not None
        assert (await load_secrets(s, hub.vault, conn.id))["access_token"] in idp.access


async def test_docusign_jwt_grant_via_the_sdk_over_tls_and_a_bad_key_needs_reauth(
    api: httpx.AsyncClient, client: Client, hub: Hub, admin_key: str, tls_idp: tuple[OAuthFake, str]
) -> None:
    idp, ca = tls_idp
    private, public = rsa_key_pair()
    wrong, _ = rsa_key_pair()
    idp.register_client("integration-key", None, jwt_public_key=public)

    def body(key: str) -> dict:
        return {
            "provider": "docusign",
            "config": {"client_id": "integration-key", "user_id": "user-guid", "account_id": "acct-1",
                       "token_url": f"{idp.url}/oauth/token", "base_url": f"{idp.url}/restapi", "ca_bundle": ca},
            "credentials": {"private_key": key},
        }

    async with connection_workers(client, hub, provider_prefix="docusign"):
        good = (await api.post("/v1/connections", json=body(private), headers=bearer(admin_key))).json()
        bad = (await api.post("/v1/connections", json=body(wrong), headers=bearer(admin_key))).json()
    assert good["status"] == "active", good["last_error"]
    assert bad["status"] == "needs_reauth" and "invalid_grant" in bad["last_error"]
    assert idp.token_calls == ["urn:ietf:params:oauth:grant-type:jwt-bearer"] * 2


async def test_demo_org_shows_every_provider_pending_once(api: httpx.AsyncClient, hub: Hub) -> None:
    from app import demo

    key = await demo.bootstrap(hub)
    assert await demo.bootstrap(hub) is None  # second start: nothing new
    items = (await api.get("/v1/connections", headers=bearer(key))).json()["items"]
    assert sorted(c["provider"] for c in items) == sorted(catalogue().providers)
    assert {c["status"] for c in items} == {"pending_auth"} and all(c["last_error"] for c in items)
