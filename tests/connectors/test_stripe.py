"""stripe.create_customer / stripe.create_invoice on stripe-python's StripeClient against the Stripe fake."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from temporalio.client import Client

from activities.connector_types import ActionCall, ActionResult
from connectors.base import ProviderError
from connectors.stripe import CreateCustomer, CreateInvoice, create_customer, create_invoice
from hub.runtime import Hub
from tests.connectors.support import RunActions, connection_workers, seed_connection
from tests.fakes.context import action_context
from tests.fakes.stripe_server import StripeFake

KEY = "sk_test_fake"


@pytest.fixture
def stripe_fake() -> Iterator[StripeFake]:
    with StripeFake(tokens=(KEY,)) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def ctx_for(fake: StripeFake, http: httpx.AsyncClient, *, key: str = KEY, idem: str = "opportunity/acme/o1/7"):
    return action_context("stripe", fake.url, http, token=key, idempotency_key=idem)


async def test_create_customer_sends_idempotency_key_and_metadata(stripe_fake: StripeFake,
                                                                   http: httpx.AsyncClient) -> None:
    params = CreateCustomer(name="Acme GmbH", email="ap@acme.example", opportunity_id="opp-1", account_id="acc-9")
    out = await create_customer(ctx_for(stripe_fake, http), params)
    (req,) = stripe_fake.calls("/v1/customers", "POST")
    assert req.headers["idempotency-key"] == "opportunity/acme/o1/7/customer"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert req.form()["metadata[opportunity_id]"] == "opp-1"
    customer = stripe_fake.objects["customers"][out["customer_id"]]
    assert customer["metadata"] == {"opportunity_id": "opp-1", "crm_account_id": "acc-9"}
    assert out["replayed"] is False


async def test_retried_create_customer_creates_one_customer(stripe_fake: StripeFake, http: httpx.AsyncClient) -> None:
    params = CreateCustomer(name="Acme GmbH")
    first = await create_customer(ctx_for(stripe_fake, http), params)
    again = await create_customer(ctx_for(stripe_fake, http), params)
    assert again == {"customer_id": first["customer_id"], "replayed": True}
    assert len(stripe_fake.objects["customers"]) == 1
    other = await create_customer(ctx_for(stripe_fake, http, idem="another-activity"), params)
    assert other["customer_id"] != first["customer_id"]


async def test_create_invoice_drafts_adds_lines_finalizes_with_keys(stripe_fake: StripeFake,
                                                                     http: httpx.AsyncClient) -> None:
    (customer,) = stripe_fake.seed_customers(1)
    params = CreateInvoice(customer=customer["id"], currency="eur", opportunity_id="opp-1", send=True,
                           lines=[{"description": "Licences", "amount": 50_000_00},
                                  {"description": "Discount", "amount": -5_000_00}])
    out = await create_invoice(ctx_for(stripe_fake, http), params)
    assert out["status"] == "open" and out["number"] and out["hosted_invoice_url"]
    assert out["total"] == 45_000_00 and out["currency"] == "eur"
    invoice = stripe_fake.objects["invoices"][out["invoice_id"]]
    assert invoice["metadata"] == {"opportunity_id": "opp-1"} and invoice["sent"] is True
    keys = [r.headers.get("idempotency-key") for r in stripe_fake.requests]
    base = "opportunity/acme/o1/7"
    assert keys == [f"{base}/invoice", f"{base}/line/0", f"{base}/line/1", f"{base}/finalize", f"{base}/send"]
    assert stripe_fake.requests[0].form()["collection_method"] == "send_invoice"
    assert stripe_fake.requests[0].form()["days_until_due"] == "30"


async def test_invoice_retried_after_a_failed_line_creates_nothing_twice(stripe_fake: StripeFake,
                                                                          http: httpx.AsyncClient) -> None:
    (customer,) = stripe_fake.seed_customers(1)
    params = CreateInvoice(customer=customer["id"], lines=[{"description": "A", "amount": 100},
                                                           {"description": "B", "amount": 200}])
    stripe_fake.fail(500, "api_error", "boom", path="/v1/invoiceitems")  # the first line fails once
    with pytest.raises(ProviderError) as err:
        await create_invoice(ctx_for(stripe_fake, http), params)
    assert err.value.status == 500
    out = await create_invoice(ctx_for(stripe_fake, http), params)  # the activity's retry
    assert len(stripe_fake.objects["invoices"]) == 1
    assert len(stripe_fake.objects["invoiceitems"]) == 2
    assert out["total"] == 300


async def test_rate_limit_surfaces_retry_after(stripe_fake: StripeFake, http: httpx.AsyncClient) -> None:
    stripe_fake.rate_limit(3, path="/v1/customers")
    with pytest.raises(ProviderError) as err:
        await create_customer(ctx_for(stripe_fake, http), CreateCustomer(name="A"))
    assert (err.value.status, err.value.code) == (429, "rate_limit")
    assert err.value.headers["retry-after"] == "3"
    assert len(stripe_fake.requests) == 1  # no SDK-side retry


async def test_provider_messages_come_through(stripe_fake: StripeFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await create_invoice(ctx_for(stripe_fake, http), CreateInvoice(customer="cus_missing",
                                                                       lines=[{"description": "A", "amount": 1}]))
    assert (err.value.status, err.value.code) == (400, "resource_missing")
    assert "No such customer: 'cus_missing'" in err.value.message
    with pytest.raises(ProviderError) as err:
        await create_customer(ctx_for(stripe_fake, http, key="sk_test_revoked"), CreateCustomer(name="A"))
    assert err.value.status == 401 and "Invalid API Key" in err.value.message


async def test_fake_lists_paginate_like_stripe(stripe_fake: StripeFake, http: httpx.AsyncClient) -> None:
    """The fake's list endpoints (for the sync work): newest first, has_more / starting_after."""
    from stripe import HTTPXClient, StripeClient

    stripe_fake.seed_customers(25)
    pool = HTTPXClient()
    client = StripeClient(KEY, base_addresses={"api": stripe_fake.url}, http_client=pool)
    seen = []
    page = await client.v1.customers.list_async({"limit": 10})
    while True:
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        page = await client.v1.customers.list_async({"limit": 10, "starting_after": page.data[-1].id})
    assert len(seen) == len(set(seen)) == 25
    created = [stripe_fake.objects["customers"][i]["created"] for i in seen]
    assert created == sorted(created, reverse=True)
    recent = await client.v1.customers.list_async({"limit": 100, "created": {"gte": created[4]}})
    assert [c.id for c in recent.data] == seen[:5]
    await pool.close_async()


# --- through the real activity on the Temporal dev server ---------------------------------------------


async def test_activity_retry_reuses_the_idempotency_key_and_waits_out_retry_after(
    client: Client, hub: Hub, stripe_fake: StripeFake
) -> None:
    """connector.run_action derives the key from workflow and activity ids: a 500 mid-invoice is retried
    with the same keys (one invoice, each line once); a 429 is retried after its Retry-After."""
    conn = await seed_connection(hub, stripe_fake.url, provider="stripe", config={"base_url": stripe_fake.url},
                                 extra_secrets={"api_key": KEY})
    (customer,) = stripe_fake.seed_customers(1)
    invoice = {"customer": customer["id"], "opportunity_id": "opp-1",
               "lines": [{"description": "A", "amount": 100}, {"description": "B", "amount": 200}]}
    stripe_fake.fail(500, "api_error", "boom", path="/v1/invoiceitems")  # first line, first attempt
    stripe_fake.rate_limit(1, path="/v1/customers")
    calls = [ActionCall(org_id="acme", action="stripe.create_invoice", params=invoice, connection_id=conn.id),
             ActionCall(org_id="acme", action="stripe.create_customer", params={"name": "Acme"},
                        connection_id=conn.id)]
    async with connection_workers(client, hub, provider_prefix="stripe"):
        results = await client.execute_workflow(RunActions.run, calls, id=f"stripe-{uuid.uuid4().hex[:8]}",
                                                task_queue=hub.settings.task_queue)
    made, customer_out = results
    assert isinstance(made, ActionResult) and made.output["total"] == 300, results
    assert len(stripe_fake.objects["invoices"]) == 1 and len(stripe_fake.objects["invoiceitems"]) == 2
    invoice_keys = [r.headers["idempotency-key"] for r in stripe_fake.calls("/v1/invoices$", "POST")]
    assert len(invoice_keys) == 2 and invoice_keys[0] == invoice_keys[1]  # attempt 2 replayed attempt 1
    assert invoice_keys[0].startswith("stripe-") and invoice_keys[0].endswith("/invoice")
    customer_posts = stripe_fake.calls("/v1/customers$", "POST")
    assert isinstance(customer_out, ActionResult) and len(customer_posts) == 2
    assert customer_posts[1].at - customer_posts[0].at >= 1.0  # Retry-After: 1 honoured
    assert len(stripe_fake.objects["customers"]) == 2  # the seeded one and ours, created once
