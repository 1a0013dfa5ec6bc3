"""gong.fetch_call over httpx against the Gong fake (Basic and Bearer auth)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from connectors.base import ProviderError
from connectors.gong import FetchCall, fetch_call
from tests.fakes.context import action_context
from tests.fakes.gong_server import ACCESS_KEY, ACCESS_SECRET, GongFake

BASIC = {"username": ACCESS_KEY, "password": ACCESS_SECRET}


@pytest.fixture
def gong() -> Iterator[GongFake]:
    with GongFake() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_fetch_call_with_basic_auth(gong: GongFake, http: httpx.AsyncClient) -> None:
    record = gong.add_call("Acme discovery", brief="Budget approved; proposal requested.",
                           key_points=["Budget approved", "Decision by June"], opportunity_id="006Opp1")
    call_id = record["metaData"]["id"]
    ctx = action_context("gong", gong.url, http, secrets=BASIC)
    out = await fetch_call(ctx, FetchCall(call_id=call_id))
    (req,) = gong.calls("/v2/calls/extensive")
    expected = "Basic " + base64.b64encode(f"{ACCESS_KEY}:{ACCESS_SECRET}".encode()).decode()
    assert req.headers["authorization"] == expected
    assert req.json()["filter"] == {"callIds": [call_id]}
    assert req.json()["contentSelector"]["exposedFields"]["parties"] is True
    assert out["call"]["id"] == call_id and out["call"]["title"] == "Acme discovery"
    assert out["call"]["duration_s"] == 1800
    assert out["crm_context"] == [{"system": "Salesforce", "type": "Opportunity", "id": "006Opp1"}]
    assert [p["affiliation"] for p in out["parties"]] == ["Internal", "External"]
    assert out["summary"]["brief"] == "Budget approved; proposal requested."
    assert out["summary"]["key_points"] == ["Budget approved", "Decision by June"]
    assert out["summary"]["next_steps"] == ["Send proposal by Friday"]
    assert out["summary"]["action_items"] == ["I'll send the proposal by Friday."]
    assert "transcript" not in out and not gong.calls("/v2/calls/transcript")


async def test_fetch_call_with_transcript_digest_and_bearer(gong: GongFake, http: httpx.AsyncClient) -> None:
    call_id = gong.add_call()["metaData"]["id"]
    ctx = action_context("gong", gong.url, http, token="gong-oauth-token")
    out = await fetch_call(ctx, FetchCall(call_id=call_id, include_transcript=True, excerpt_sentences=2))
    assert gong.calls("/v2/calls/transcript")[0].headers["authorization"] == "Bearer gong-oauth-token"
    speakers = {s["name"]: s for s in out["transcript"]["speakers"]}
    assert speakers["Alex Exec"]["sentences"] == 2 and speakers["Bo Buyer"]["sentences"] == 1
    assert speakers["Alex Exec"]["talk_time_s"] == pytest.approx(6.9)
    assert sum(s["talk_ratio"] for s in speakers.values()) == pytest.approx(1.0, abs=0.01)
    assert out["transcript"]["excerpt"] == [{"speaker": "Alex Exec", "text": "Thanks for joining today."},
                                            {"speaker": "Alex Exec", "text": "Let's talk about pricing."}]


async def test_unknown_call_and_bad_credentials(gong: GongFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await fetch_call(action_context("gong", gong.url, http, secrets=BASIC), FetchCall(call_id="123"))
    assert err.value.status == 404 and "No calls found" in err.value.message
    bad = action_context("gong", gong.url, http, secrets={"username": ACCESS_KEY, "password": "wrong"})
    with pytest.raises(ProviderError) as err:
        await fetch_call(bad, FetchCall(call_id="123"))
    assert err.value.status == 401


async def test_rate_limit_surfaces_retry_after(gong: GongFake, http: httpx.AsyncClient) -> None:
    call_id = gong.add_call()["metaData"]["id"]
    gong.rate_limit(2)
    ctx = action_context("gong", gong.url, http, secrets=BASIC)
    with pytest.raises(ProviderError) as err:
        await fetch_call(ctx, FetchCall(call_id=call_id))
    assert err.value.status == 429 and err.value.headers["retry-after"] == "2"
    assert (await fetch_call(ctx, FetchCall(call_id=call_id)))["call"]["id"] == call_id


async def test_fake_pages_calls_with_records_cursor(http: httpx.AsyncClient) -> None:
    """The fake's call list (for the sync work): records.cursor until the last page."""
    with GongFake(page_size=4) as gong:
        gong.seed_calls(10)
        auth = {"Authorization": "Bearer gong-oauth-token"}
        ids, cursor, pages = [], None, 0
        while True:
            params = {"fromDateTime": "2024-01-01T00:00:00Z", **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"{gong.url}/v2/calls", params=params, headers=auth)).json()
            ids += [c["id"] for c in page["calls"]]
            pages += 1
            cursor = page["records"].get("cursor")
            if not cursor:
                break
        assert pages == 3 and len(set(ids)) == 10 and page["records"]["totalRecords"] == 10
        late = await http.get(f"{gong.url}/v2/calls", params={"fromDateTime": "2030-01-01T00:00:00Z"}, headers=auth)
        assert late.status_code == 404 and late.json()["errors"]


def test_call_id_must_be_numeric() -> None:
    with pytest.raises(ValueError):
        FetchCall(call_id="../admin")
