"""http.post: the SSRF guard (after DNS resolution, no redirects) and the real request."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import BaseRoute, Route
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.http_action import HttpActions, HttpPostCall
from rules.netguard import DestinationRefused, check_addresses, parse_url, refusal
from tests.fakes.server import FakeServer


class Receiver(FakeServer):
    """Any HTTP endpoint an admin may point http.post at."""

    def __init__(self) -> None:
        super().__init__(tokens=())

    def routes(self) -> list[BaseRoute]:
        async def hook(request: Request) -> JSONResponse:
            return JSONResponse({"received": await request.json()}, status_code=201)

        async def moved(_: Request) -> RedirectResponse:
            return RedirectResponse("/hooks/deal-won", status_code=302)

        return [Route("/hooks/deal-won", hook, methods=["POST"]), Route("/moved", moved, methods=["POST"])]


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("fc00::5", "private"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "shared"),
        ("::ffff:127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert reason in refusal(ipaddress.ip_address(address))


def test_public_addresses_pass_and_allowlist_opens_private_ones() -> None:
    assert refusal(ipaddress.ip_address("93.184.216.34")) is None
    assert refusal(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946")) is None
    with pytest.raises(DestinationRefused, match="erp.internal resolves to 10.0.0.7, a private address"):
        check_addresses("erp.internal", ["93.184.216.34", "10.0.0.7"])  # one bad address is enough
    assert check_addresses("erp.internal", ["10.0.0.7"], ["10.0.0.0/8"])
    assert check_addresses("erp.internal", ["10.0.0.7"], ["erp.internal"])


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.com/x", "only http and https"),
        ("https://user:pw@example.com/", "credentials"),
        ("https:///path", "no host"),
        ("example.com/hook", "only http and https"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(DestinationRefused, match=message):
        parse_url(url)


def call(url: str, **params) -> HttpPostCall:
    return HttpPostCall(
        org_id="acme",
        idempotency_key="opp/1/stage.entered/r/0",
        params={"url": url, "json": {"deal": "o1"}, **params},
    )


async def test_refused_after_dns_resolution() -> None:
    async def rebinding(host: str, port: int) -> list[str]:  # a public-looking name pointing inside
        return ["127.0.0.1"]

    actions = HttpActions(resolver=rebinding)
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(actions.post, call("https://hooks.example.com/x"))
    assert info.value.non_retryable and "hooks.example.com resolves to 127.0.0.1, a loopback address" in str(
        info.value
    )


async def test_localhost_by_name_is_refused_with_real_dns() -> None:
    with Receiver() as receiver:
        with pytest.raises(ApplicationError, match="a loopback address"):
            await ActivityEnvironment().run(
                HttpActions().post, call(f"http://localhost:{receiver.port}/hooks/deal-won")
            )
        assert receiver.requests == []


async def test_allow_listed_destination_is_posted_to_the_checked_address() -> None:
    with Receiver() as receiver:
        actions = HttpActions(allowlist=["127.0.0.1/32"])
        result = await ActivityEnvironment().run(actions.post, call(f"{receiver.url}/hooks/deal-won"))
        assert result["status"] == 201 and '"deal":"o1"' in result["body"]
        [request] = receiver.requests
        assert request.json() == {"deal": "o1"}
        assert request.headers["idempotency-key"] == "opp/1/stage.entered/r/0"
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_redirects_are_not_followed() -> None:
    with Receiver() as receiver:
        actions = HttpActions(allowlist=["127.0.0.1"])
        with pytest.raises(ApplicationError, match="redirects are not followed") as info:
            await ActivityEnvironment().run(actions.post, call(f"{receiver.url}/moved"))
        assert info.value.non_retryable
        assert [r.path for r in receiver.requests] == ["/moved"]
