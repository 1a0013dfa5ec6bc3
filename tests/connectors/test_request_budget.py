"""Every request a provider sees passes the request gate (draws from its connection's budget) — plain HTTP
through ``ctx.http`` and every SDK client, multi-request actions once per request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest

from connectors.base import REQUEST_GATE, provider_http_client
from connectors.docusign import send_envelope
from connectors.openai import CompleteJson, complete_json
from connectors.sharepoint import EnsureFolders, ensure_folders
from connectors.slack import PostMessage, post_message
from connectors.stripe import CreateInvoice, create_invoice
from hub.egress import DestinationRefused, EgressPolicy
from tests.connectors import test_docusign, test_sharepoint, test_slack, test_stripe
from tests.fakes.context import action_context
from tests.fakes.docusign_server import DocuSignFake
from tests.fakes.graph_server import GraphFake
from tests.fakes.openai_server import OpenAIFake
from tests.fakes.slack_server import SlackFake
from tests.fakes.stripe_server import StripeFake


@contextmanager
def counted_gate() -> Iterator[list[httpx.Request | None]]:
    """The gate as the activity sets it, recording each request that passes (None for an SDK call)."""
    passed: list[httpx.Request | None] = []

    async def gate(request: httpx.Request | None) -> None:
        passed.append(request)

    token = REQUEST_GATE.set(gate)
    try:
        yield passed
    finally:
        REQUEST_GATE.reset(token)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with provider_http_client() as client:
        yield client


async def test_ensure_folders_draws_once_per_graph_request(http: httpx.AsyncClient) -> None:
    with GraphFake(tokens=(test_sharepoint.TOKEN,)) as graph, counted_gate() as passed:
        folders = [f"{stage:02d} Stage/Part {n}" for stage in range(1, 6) for n in range(8)]
        out = await ensure_folders(test_sharepoint.ctx_for(graph, http), EnsureFolders(root="Opps/Acme",
                                                                                         folders=folders))
    assert len(out["created"]) >= 40
    assert len(passed) == len(graph.requests) > 40


async def test_create_invoice_draws_for_the_draft_every_line_and_the_finalisation(http: httpx.AsyncClient) -> None:
    with StripeFake(tokens=(test_stripe.KEY,)) as stripe, counted_gate() as passed:
        (customer,) = stripe.seed_customers(1)
        stripe.requests.clear()
        lines = [{"description": f"Line {i}", "amount": 100_00} for i in range(25)]
        await create_invoice(test_stripe.ctx_for(stripe, http), CreateInvoice(customer=customer["id"], lines=lines,
                                                                            send=True))
    assert len(passed) == len(stripe.requests) == 1 + 25 + 2


async def test_sdk_clients_draw_once_per_call(http: httpx.AsyncClient) -> None:
    with SlackFake(tokens=(test_slack.TOKEN,)) as slack, counted_gate() as passed:
        await post_message(test_slack.ctx_for(slack, http), PostMessage(channel="#deals", text="hello"))
    assert len(passed) == len(slack.requests) == 1
    with DocuSignFake(tokens=(test_docusign.TOKEN,)) as docusign, counted_gate() as passed:
        await send_envelope(test_docusign.ctx_for(docusign, http), test_docusign.msa())  # look up, then create
    assert len(passed) == len(docusign.requests) == 2
    with OpenAIFake(answer={"x": 1}) as openai, counted_gate() as passed:
        await complete_json(action_context("openai", openai.url + "/v1", http),
                            CompleteJson.model_validate({"messages": [{"role": "user", "content": "hi"}],
                                                         "schema": {"type": "object"}}))
    assert len(passed) == len(openai.requests) == 1


async def test_ctx_http_draws_after_the_destination_is_resolved_and_checked() -> None:
    """``ctx.http`` on the egress policy: the address is resolved and checked first, the slot drawn last, so
    the resolution's time is not spent between the slot and the socket (a request refused draws nothing)."""
    order: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        order.append(f"resolve {host}")
        return ["127.0.0.1"] if host == "provider.test" else ["10.0.0.1"]

    async def gate(request: httpx.Request | None) -> None:
        order.append("draw")

    async def answer(request: httpx.Request) -> httpx.Response:
        order.append(f"send {request.url.host}")
        return httpx.Response(200)

    client = provider_http_client(EgressPolicy(["127.0.0.1/32"], resolver=resolver))
    client._transport.inner.inner = httpx.MockTransport(answer)  # the socket: the egress and gate layers stay real
    passing = REQUEST_GATE.set(gate)
    try:
        async with client:
            assert (await client.get("http://provider.test/api/x")).status_code == 200
            with pytest.raises(DestinationRefused):
                await client.get("http://internal.test/admin")
    finally:
        REQUEST_GATE.reset(passing)
    assert order == ["resolve provider.test", "draw", "send 127.0.0.1", "resolve internal.test"]
