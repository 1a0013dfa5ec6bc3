"""docusign.send_envelope / docusign.envelope_status on docusign-esign against the DocuSign fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from connectors.base import ProviderError
from connectors.docusign import EnvelopeStatus, SendEnvelope, envelope_status, send_envelope
from tests.fakes.context import action_context
from tests.fakes.docusign_server import ACCOUNT_ID, MSA_TEMPLATE_ID, DocuSignFake

TOKEN = "docusign-test-token"


@pytest.fixture
def docusign() -> Iterator[DocuSignFake]:
    with DocuSignFake(tokens=(TOKEN,)) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def ctx_for(fake: DocuSignFake, http: httpx.AsyncClient, *, token: str = TOKEN, idem: str = "wf/opp-1/act-3"):
    config = {"account_id": ACCOUNT_ID, "templates": {"msa": MSA_TEMPLATE_ID}}
    return action_context("docusign", fake.url + "/restapi", http, token=token, config=config, idempotency_key=idem)


def msa(**extra) -> SendEnvelope:
    return SendEnvelope(template="msa", signer="cfo@acme.example", signer_name="Casey CFO",
                        opportunity_id="opp-1", **extra)


async def test_send_envelope_from_template_carries_the_opportunity_id(docusign: DocuSignFake,
                                                                      http: httpx.AsyncClient) -> None:
    out = await send_envelope(ctx_for(docusign, http), msa())
    assert out == {"envelope_id": out["envelope_id"], "status": "sent", "created": True, "opportunity_id": "opp-1"}
    (req,) = docusign.calls(r"/envelopes$", "POST")
    assert req.path == f"/restapi/v2.1/accounts/{ACCOUNT_ID}/envelopes"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    body = req.json()
    assert body["templateId"] == MSA_TEMPLATE_ID and body["status"] == "sent"
    assert body["templateRoles"] == [{"email": "cfo@acme.example", "name": "Casey CFO", "roleName": "Signer"}]
    fields = {f["name"]: f["value"] for f in body["customFields"]["textCustomFields"]}
    assert fields["opportunity_id"] == "opp-1"
    stored = docusign.envelopes[out["envelope_id"]]["customFields"]["textCustomFields"]
    assert {"name": "opportunity_id", "value": "opp-1"}.items() <= stored[0].items()


async def test_retried_send_returns_the_first_envelope(docusign: DocuSignFake, http: httpx.AsyncClient) -> None:
    first = await send_envelope(ctx_for(docusign, http), msa())
    again = await send_envelope(ctx_for(docusign, http), msa())
    assert again["envelope_id"] == first["envelope_id"] and again["created"] is False
    assert len(docusign.envelopes) == 1
    other = await send_envelope(ctx_for(docusign, http, idem="wf/opp-1/act-9"), msa())
    assert other["envelope_id"] != first["envelope_id"] and len(docusign.envelopes) == 2


async def test_envelope_status_reads_signers_and_opportunity(docusign: DocuSignFake, http: httpx.AsyncClient) -> None:
    sent = await send_envelope(ctx_for(docusign, http), msa())
    docusign.set_status(sent["envelope_id"], "completed")
    out = await envelope_status(ctx_for(docusign, http), EnvelopeStatus(envelope_id=sent["envelope_id"]))
    assert out["status"] == "completed" and out["completed_at"]
    assert out["opportunity_id"] == "opp-1"
    assert out["signers"][0]["email"] == "cfo@acme.example" and out["signers"][0]["status"] == "completed"
    assert docusign.calls("/envelopes/")[-1].query["include"] == ["custom_fields,recipients"]


async def test_errors_carry_docusign_codes(docusign: DocuSignFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await envelope_status(ctx_for(docusign, http), EnvelopeStatus(envelope_id="nope"))
    assert (err.value.status, err.value.code) == (400, "ENVELOPE_DOES_NOT_EXIST")
    with pytest.raises(ProviderError) as err:
        await send_envelope(ctx_for(docusign, http), SendEnvelope(template="unknown-template", signer="a@b.c",
                                                                  opportunity_id="o"))
    assert err.value.code == "TEMPLATE_ID_INVALID"
    with pytest.raises(ProviderError) as err:
        await send_envelope(ctx_for(docusign, http, token="expired"), msa())
    assert (err.value.status, err.value.code) == (401, "USER_AUTHENTICATION_FAILED")


async def test_rate_limit_surfaces_retry_headers(docusign: DocuSignFake, http: httpx.AsyncClient) -> None:
    docusign.rate_limit(4, path="/envelopes")
    with pytest.raises(ProviderError) as err:
        await send_envelope(ctx_for(docusign, http), msa())
    assert err.value.status == 429 and err.value.code == "HOURLY_APIINVOCATION_LIMIT_EXCEEDED"
    assert err.value.headers["retry-after"] == "4" and int(err.value.headers["x-ratelimit-reset"]) > 0
    assert docusign.envelopes == {} and len(docusign.requests) == 1  # urllib3 did not retry on its own


async def test_fake_lists_status_changes_with_pages(docusign: DocuSignFake, http: httpx.AsyncClient) -> None:
    """The fake's envelope list (for the sync work): from_date required, start_position/count, nextUri."""
    docusign.seed_envelopes(5)
    url = f"{docusign.url}/restapi/v2.1/accounts/{ACCOUNT_ID}/envelopes"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await http.get(url, headers=auth)).json()["errorCode"] == "INVALID_REQUEST_PARAMETER"
    page = (await http.get(url, headers=auth, params={"from_date": "2000-01-01T00:00:00Z", "count": 2})).json()
    assert (page["resultSetSize"], page["totalSetSize"], len(page["envelopes"])) == ("2", "5", 2)
    assert "start_position=2" in page["nextUri"]
    last = (await http.get(url, headers=auth, params={"from_date": "2000-01-01T00:00:00Z", "count": 2,
                                                      "start_position": 4})).json()
    assert len(last["envelopes"]) == 1 and "nextUri" not in last
    assert json.dumps(last)  # plain JSON


def test_bad_signer_is_rejected_before_any_call() -> None:
    with pytest.raises(ValueError):
        SendEnvelope(template="msa", signer="not-an-email", opportunity_id="o")
