"""Finding 4: one egress policy for every URL a tenant controls.

The attacks: a Stripe connection whose ``config.base_url`` is on 127.0.0.1 made the hub send its API key
there; a ``generic_oauth2`` connection sent its client secret to a loopback token endpoint; the CRM
callback went anywhere; ``ca_bundle`` took any host path. Here the hub runs with the production default
(no ``HUB_HTTP_ALLOWLIST``), so the provider fakes on 127.0.0.1 stand for internal services: nothing may
reach them. Each HTTP stack an SDK brings (httpx, httpx2, aiohttp, urllib3, requests) is then checked
on its own: it connects to the checked address (pinned) and never follows a redirect into a refused range.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.connections import ConnectionActivities
from activities.connector_types import ERR_DESTINATION, ERR_REAUTH, ActionCall, RefreshInput
from activities.opportunities import OpportunityActivities
from activities.opportunity_types import CrmEventInput
from connectors.base import ProviderError
from connectors.sharepoint import Subscribe, create_subscription
from hub.egress import DestinationRefused, EgressPolicy
from hub.runtime import Hub
from hub.settings import Settings
from hub.store.orgs import Org
from tests.conftest import bearer
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, seed_connection
from tests.fakes.context import action_context
from tests.fakes.crm_server import CrmFake
from tests.fakes.oauth_server import OAuthFake, self_signed_cert
from tests.fakes.server import FakeServer
from tests.fakes.stripe_server import StripeFake

PARTNER = "partner.test"  # a name only the tests' resolver knows: reaching it proves the pinned address was used


@pytest.fixture
def settings(tmp_path: Path, vault_keys: str, task_queue: str) -> Settings:
    """The production default: no egress opening at all."""
    return Settings(data_dir=tmp_path / "data", vault_keys=vault_keys, task_queue=task_queue)


async def _refused(coro) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    assert info.value.non_retryable
    return info.value


async def test_a_stripe_base_url_on_loopback_gets_no_request_and_no_api_key(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    with StripeFake() as internal:
        body = {"provider": "stripe", "config": {"base_url": internal.url},
                "credentials": {"api_key": "sk_test_fake", "webhook_secrets": "whsec_1"}}
        created = (await api.post("/v1/connections", json=body, headers=bearer(admin_key))).json()
        call = ActionCall(org_id="acme", action="stripe.create_customer", params={"name": "Acme"},
                          connection_id=created["id"])
        error = await _refused(ActivityEnvironment().run(ConnectionActivities(hub).run_action, call))
        assert error.type == ERR_DESTINATION and "127.0.0.1, a loopback address" in str(error)
        assert internal.requests == []

        # HUB_HTTP_ALLOWLIST is the one opening
        opened = Hub(settings=hub.settings.model_copy(update={"http_allowlist": ["127.0.0.1/32"]}), db=hub.db,
                     vault=hub.vault)
        result = await ActivityEnvironment().run(ConnectionActivities(opened).run_action, call)
        assert result.ok and len(internal.calls("/v1/customers", "POST")) == 1


async def test_a_loopback_token_url_never_sees_the_client_secret(hub: Hub) -> None:
    with OAuthFake() as internal:
        internal.register_client(CLIENT_ID, CLIENT_SECRET)
        access, refresh = internal.issue(CLIENT_ID)
        conn = await seed_connection(hub, internal.url, access_token=access, refresh_token=refresh)
        acts = ConnectionActivities(hub)
        error = await _refused(ActivityEnvironment().run(
            acts.refresh, RefreshInput(org_id="acme", connection_id=conn.id, from_version=conn.token_version)))
        assert error.type == ERR_REAUTH and "token_url refused" in str(error)
        call = ActionCall(org_id="acme", action="generic_oauth2.request", params={"path": "/things"},
                          connection_id=conn.id)
        error = await _refused(ActivityEnvironment().run(acts.run_action, call))
        assert error.type == ERR_DESTINATION
        assert internal.requests == []  # neither the secret nor the token went out; no body came back


async def test_the_crm_callback_cannot_aim_inside(hub: Hub) -> None:
    with CrmFake() as internal:
        async with hub.db.session() as s:
            s.add(Org(id="acme", name="Acme", flags={}, crm_callback_url=internal.callback_url))
        event = CrmEventInput(org_id="acme", event_id="evt_1", type="stage.changed",
                              occurred_at=datetime.now(UTC), data={})
        error = await _refused(ActivityEnvironment().run(OpportunityActivities(hub).send_crm_event, event))
        assert error.type == "DestinationRefused" and internal.requests == []


async def test_graph_notifications_go_only_to_the_connections_own_endpoint() -> None:
    async with httpx.AsyncClient() as http:
        ctx = action_context("sharepoint", "https://graph.example", http, secrets={"client_state": "s"})
        ctx.egress = EgressPolicy()
        for url, reason in [("https://hub.example/elsewhere", "must be this connection's"),
                            ("http://169.254.169.254/webhooks/sharepoint/con_test", "cloud metadata")]:
            with pytest.raises(ProviderError) as info:
                await create_subscription(ctx, Subscribe(notification_url=url))
            assert info.value.status == 400 and reason in info.value.message


async def test_ca_bundle_is_pem_text_or_a_name_in_the_ca_directory_never_a_host_path(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, tmp_path: Path
) -> None:
    def body(ca: str) -> dict:
        return {"provider": "generic_oauth2", "config": {"client_id": "c", "ca_bundle": ca,
                                                          "authorization_url": "https://idp.example/authorize",
                                                          "token_url": "https://idp.example/token",
                                                          "base_url": "https://api.example"},
                "credentials": {"client_secret": "s"}}

    answers = [await api.post("/v1/connections", json=body(p), headers=bearer(admin_key))
               for p in ("/etc/passwd", "/no/such/file", "../../etc/hostname")]
    assert {a.status_code for a in answers} == {422}
    assert len({a.json()["detail"] for a in answers}) == 1  # the same answer whether the file exists or not
    cert, _ = self_signed_cert(tmp_path)
    pem = Path(cert).read_text()
    ok = await api.post("/v1/connections", json=body(pem), headers=bearer(admin_key))
    assert ok.status_code == 201, ok.text
    kept = Path(hub.egress.ca_file(pem))
    assert kept.read_text() == pem and kept.parent == hub.settings.data_dir / "ca-bundles"
    assert kept.stat().st_mode & 0o077 == 0
    policy = EgressPolicy(ca_dir=tmp_path)
    assert policy.ca_file(Path(cert).name) == str(Path(cert).resolve())
    with pytest.raises(ValueError, match="under the configured CA directory"):
        policy.ca_file("../" + tmp_path.name + "/../x")


# --- each HTTP stack: pinned to the checked address, no redirect into a refused range ---------------------
class Internal(FakeServer):
    """An internal service: ``/ok`` answers, ``/hop`` redirects to its own loopback address."""

    def routes(self) -> list[BaseRoute]:
        async def ok(request: Request) -> Response:
            return JSONResponse({"host": request.headers["host"]})

        async def hop(_: Request) -> Response:
            return RedirectResponse(f"{self.url}/secret", status_code=302)

        async def secret(_: Request) -> Response:
            return JSONResponse({"secret": "internal"})

        return [Route("/ok", ok), Route("/hop", hop), Route("/secret", secret)]


@pytest.fixture
def internal() -> Iterator[Internal]:
    with Internal() as server:
        yield server


def _partner_policy() -> EgressPolicy:
    """``partner.test`` resolves (for these tests only) to 127.0.0.1 and is allow-listed by name; the
    literal 127.0.0.1 is not."""

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host in (PARTNER, "127.0.0.1") else []

    return EgressPolicy([PARTNER], resolver=resolver, sync_resolver=lambda host, port: asyncio.run(resolver(host, port)))


def _urls(server: Internal) -> tuple[str, str, str]:
    base = f"http://{PARTNER}:{server.port}"
    return f"{base}/ok", f"{base}/hop", f"{server.url}/secret"


def _assert_never_reached_secret(server: Internal) -> None:
    assert [r.path for r in server.requests if r.path == "/secret"] == []


async def test_httpx_and_httpx2_clients(internal: Internal) -> None:
    import httpx2

    policy = _partner_policy()
    ok, hop, secret = _urls(internal)
    async with policy.httpx_client(follow_redirects=True) as client:
        answer = await client.get(ok)
        assert answer.json() == {"host": f"{PARTNER}:{internal.port}"}  # reached via the checked address
        for url in (hop, secret):
            with pytest.raises(DestinationRefused, match="127.0.0.1, a loopback address"):
                await client.get(url)
    async with httpx2.AsyncClient(transport=policy.httpx2_transport(), follow_redirects=True) as client:
        assert (await client.get(ok)).json() == {"host": f"{PARTNER}:{internal.port}"}
        with pytest.raises(DestinationRefused):
            await client.get(hop)
    _assert_never_reached_secret(internal)


async def test_aiohttp_session_for_slack(internal: Internal) -> None:
    policy = _partner_policy()
    ok, hop, secret = _urls(internal)
    async with policy.aiohttp_session() as session:
        async with session.get(ok) as answer:
            assert (await answer.json()) == {"host": f"{PARTNER}:{internal.port}"}
        for url in (hop, secret):
            with pytest.raises(Exception, match="loopback address"):
                async with session.get(url):
                    pass
    _assert_never_reached_secret(internal)


def test_urllib3_pools_for_docusign_and_requests_for_msal(internal: Internal) -> None:
    import urllib3

    policy = _partner_policy()
    ok, hop, secret = _urls(internal)
    pools = policy.guard_pools(urllib3.PoolManager())
    assert pools.request("GET", ok).json() == {"host": f"{PARTNER}:{internal.port}"}
    for url in (hop, secret):
        with pytest.raises(DestinationRefused):
            pools.request("GET", url)
    session = policy.requests_session()
    assert session.get(ok, timeout=5).json() == {"host": f"{PARTNER}:{internal.port}"}
    for url in (hop, secret):
        with pytest.raises(DestinationRefused):
            session.get(url, timeout=5)
    _assert_never_reached_secret(internal)
