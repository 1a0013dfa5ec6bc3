"""slack.post_message / slack.post_approval on slack_sdk's AsyncWebClient against the Slack fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from connectors.base import ACTIONS, ProviderError
from connectors.events import map_event
from connectors.slack import APPROVAL_ACTION_PREFIX, PostApproval, PostMessage, post_approval, post_message
from tests.fakes.context import action_context
from tests.fakes.slack_server import SlackFake

TOKEN = "xoxb-test-token"


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    with SlackFake(tokens=(TOKEN,)) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def ctx_for(slack: SlackFake, http: httpx.AsyncClient, token: str = TOKEN):
    return action_context("slack", slack.url + "/api", http, token=token)


def test_actions_registered() -> None:
    assert ACTIONS["slack.post_message"].params is PostMessage
    assert ACTIONS["slack.post_approval"].params is PostApproval


async def test_post_message_sends_bearer_json_and_returns_ts(slack: SlackFake, http: httpx.AsyncClient) -> None:
    out = await post_message(ctx_for(slack, http), PostMessage(channel="#deals", text="Acme entered Acquire"))
    deals = slack.channel_id("deals")
    assert out["channel"] == deals and out["ts"].endswith(".000100")
    (req,) = slack.calls("/api/chat.postMessage")
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.json()["text"] == "Acme entered Acquire"
    assert slack.messages[-1]["channel"] == deals


async def test_approval_buttons_encode_the_request(slack: SlackFake, http: httpx.AsyncClient) -> None:
    params = PostApproval(channel="#approvals", text="Approve 30% discount for *Acme*?", opportunity_id="opp-42",
                          request="discount-30", fields={"Amount": "60,000 EUR"})
    out = await post_approval(ctx_for(slack, http), params)
    assert out["request"] == "discount-30"
    blocks = slack.messages[-1]["blocks"]
    buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert [b["action_id"] for b in buttons] == [APPROVAL_ACTION_PREFIX + "approve", APPROVAL_ACTION_PREFIX + "reject"]
    values = [json.loads(b["value"]) for b in buttons]
    assert values == [{"opportunity_id": "opp-42", "request": "discount-30", "decision": d}
                      for d in ("approve", "reject")]
    assert any(f["text"] == "*Amount*\n60,000 EUR" for b in blocks for f in b.get("fields", []))


async def test_approval_value_round_trips_through_the_webhook_mapping(slack: SlackFake,
                                                                       http: httpx.AsyncClient) -> None:
    """The button value is what connectors/events.py reads back from a block_actions click."""
    params = PostApproval(channel="#approvals", text="ok?", opportunity_id="opp-7", request="r1")
    await post_approval(ctx_for(slack, http), params)
    button = next(b for b in slack.messages[-1]["blocks"] if b["type"] == "actions")["elements"][1]
    click = {"type": "block_actions", "user": {"id": "U1", "username": "mia"},
             "container": {"channel_id": "C1", "message_ts": "1.2"},
             "actions": [{"action_id": button["action_id"], "block_id": "fulqrun_approval",
                          "value": button["value"], "type": "button"}]}
    body = urlencode({"payload": json.dumps(click)}).encode()
    (event,) = map_event("slack", "block_actions", body, "application/x-www-form-urlencoded").events
    assert event.opportunity_id == "opp-7"
    assert event.data["approval"] == {"decision": "rejected", "request": "r1", "by": "U1"}


async def test_invalid_token_is_a_401(slack: SlackFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await post_message(ctx_for(slack, http, token="xoxb-expired"), PostMessage(channel="#deals", text="x"))
    assert (err.value.status, err.value.code) == (401, "invalid_auth")


async def test_unknown_channel_is_a_400_with_slack_code(slack: SlackFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await post_message(ctx_for(slack, http), PostMessage(channel="#nope", text="x"))
    assert (err.value.status, err.value.code) == (400, "channel_not_found")
    assert "channel_not_found" in err.value.message


async def test_rate_limit_surfaces_retry_after(slack: SlackFake, http: httpx.AsyncClient) -> None:
    slack.rate_limit(7, path="chat.postMessage")
    with pytest.raises(ProviderError) as err:
        await post_message(ctx_for(slack, http), PostMessage(channel="#deals", text="x"))
    assert err.value.status == 429
    assert err.value.headers["retry-after"] == "7"
    assert len(slack.calls("chat.postMessage")) == 1  # the SDK did not retry on its own
    out = await post_message(ctx_for(slack, http), PostMessage(channel="#deals", text="x"))
    assert out["ts"]


def test_params_reject_unknown_fields() -> None:
    with pytest.raises(ValueError):
        PostMessage.model_validate({"channel": "#d", "text": "x", "txt": "typo"})
