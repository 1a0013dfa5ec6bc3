"""The real sync models against the provider fakes: paging, 429 + Retry-After, change events, webhook dedupe."""

from __future__ import annotations

import json
import uuid

import httpx
from temporalio.client import Client

from activities.sync_schedules import connection_models
from connectors.catalogue import RateLimit
from connectors.events import map_event
from connectors.sync_generic import PATH_KEY
from hub.runtime import Hub
from tests.connectors import support as connectors_support
from tests.fakes.docusign_server import ACCOUNT_ID, DocuSignFake
from tests.fakes.gong_server import ACCESS_KEY, ACCESS_SECRET, GongFake
from tests.fakes.graph_server import DRIVE_ID, GraphFake
from tests.fakes.oauth_server import OAuthFake
from tests.fakes.stripe_server import StripeFake
from tests.sync.support import (
    inbox_rows,
    post_webhook,
    run_sync,
    seed_connection,
    state_of,
    stored,
    sync_workers,
)
from webhooks.relay import Relay

WHSEC = "whsec_sync_test"
FAST = RateLimit(per_second=50)  # DocuSign's real limit (0.83/s) would make this test slow


def wid() -> str:
    return f"sync-test-{uuid.uuid4().hex[:10]}"


def domain_types(row) -> list[str]:
    return [e.type for e in map_event(row.provider, row.event_type, row.body, row.content_type).events]


async def test_stripe_invoices_page_through_a_429_and_raise_payment_received_once_whichever_path_is_first(
    api: httpx.AsyncClient, client: Client, hub: Hub
) -> None:
    with StripeFake() as fake:
        customer = fake.seed_customers(1)[0]
        invoices = fake.seed_invoices(customer["id"], 12, status="open")
        conn = await seed_connection(hub, "stripe", base_url=fake.url,
                                     secrets={"api_key": "sk_test_fake", "webhook_secrets": WHSEC})
        fake.rate_limit(2, path="^/v1/invoices$", after=1)  # the second list request: 429, Retry-After: 2
        async with sync_workers(client, hub, "stripe"):
            first = await run_sync(client, hub, conn, "stripe.invoices", workflow_id=wid(), page_size=5)
            assert (first.pages, first.records, first.events) == (4, 12, 0)  # 3 invoice pages + 1 events page
            listed = fake.calls("^/v1/invoices$", "GET")
            assert len(listed) == 4  # 3 pages, one of them asked twice
            assert listed[2].query == listed[1].query  # the retry asked for the same page
            assert listed[2].at - listed[1].at >= 2.0  # ... after the Retry-After
            assert sorted(await stored(hub, conn, "stripe.invoices")) == sorted(i["id"] for i in invoices)

            # paid: seen by the sync first, then delivered by webhook → one inbox event
            paid = fake.objects["invoices"][invoices[3]["id"]]
            paid.update(status="paid", amount_paid=4200, metadata={"opportunity_id": "opp-7"})
            event = fake.emit("invoice.paid", paid)
            second = await run_sync(client, hub, conn, "stripe.invoices", workflow_id=wid(), page_size=5)
            assert second.events == 1
            assert (await stored(hub, conn, "stripe.invoices"))[paid["id"]]["status"] == "paid"
            r = await post_webhook(api, hub, "stripe", conn.id, json.dumps(event).encode())
            assert r.status_code == 200, r.text
            rows = await inbox_rows(hub, conn)
            assert [(r.event_id, r.event_type) for r in rows] == [(event["id"], "invoice.paid")]
            assert rows[0].headers == {"x-fulqrun-source": "sync:stripe.invoices"}
            assert domain_types(rows[0]) == ["payment.received"]
            assert map_event("stripe", "invoice.paid", rows[0].body, "").events[0].opportunity_id == "opp-7"

            # another one: delivered by webhook first, then seen by the sync → still one
            late = fake.objects["invoices"][invoices[5]["id"]]
            late.update(status="paid", amount_paid=990)
            event2 = fake.emit("invoice.paid", late)
            r = await post_webhook(api, hub, "stripe", conn.id, json.dumps(event2).encode())
            assert r.status_code == 200, r.text
            third = await run_sync(client, hub, conn, "stripe.invoices", workflow_id=wid(), page_size=5)
            assert third.events == 0 and third.changed == 1
            rows = await inbox_rows(hub, conn)
            assert sorted(r.event_id for r in rows) == sorted([event["id"], event2["id"]])
            assert (await stored(hub, conn, "stripe.invoices"))[late["id"]]["status"] == "paid"
    # the webhook relay takes the sync's row like any delivery: its opportunity gets a WebhookEventWorkflow
    await Relay(hub, task_queue=f"unpolled-{uuid.uuid4().hex[:6]}").drain()
    synced = next(r for r in await inbox_rows(hub, conn) if r.event_id == event["id"])
    assert (synced.status, synced.domain_types) == ("relayed", ["payment.received"])
    assert synced.workflow_id.startswith(f"webhook/stripe/{conn.id}/{event['id']}")


async def test_stripe_subscriptions_include_canceled_and_an_old_event_never_rolls_a_record_back(
    client: Client, hub: Hub
) -> None:
    with StripeFake() as fake:
        customer = fake.seed_customers(1)[0]
        sub = fake.seed_subscriptions(customer["id"], 2)[0]
        conn = await seed_connection(hub, "stripe", base_url=fake.url)
        async with sync_workers(client, hub, "stripe"):
            await run_sync(client, hub, conn, "stripe.subscriptions", workflow_id=wid())
            live = fake.objects["subscriptions"][sub["id"]]
            live["status"] = "past_due"
            older = fake.emit("customer.subscription.updated", live)
            live.update(status="canceled", canceled_at=older["created"] + 5)
            fake.emit("customer.subscription.deleted", live)
            summary = await run_sync(client, hub, conn, "stripe.subscriptions", workflow_id=wid())
    assert summary.events == 1  # subscription.canceled; the update maps to no domain event
    assert (await stored(hub, conn, "stripe.subscriptions"))[sub["id"]]["status"] == "canceled"
    rows = await inbox_rows(hub, conn)
    assert [domain_types(r) for r in rows] == [["subscription.canceled"]]


async def test_gong_calls_new_call_raises_call_recorded_once_even_after_its_webhook(
    api: httpx.AsyncClient, client: Client, hub: Hub
) -> None:
    with GongFake(page_size=4) as fake:
        fake.seed_calls(10)
        conn = await seed_connection(hub, "gong", base_url=fake.url,
                                     secrets={"username": ACCESS_KEY, "password": ACCESS_SECRET,
                                              "webhook_secrets": WHSEC})
        async with sync_workers(client, hub, "gong"):
            first = await run_sync(client, hub, conn, "gong.calls", workflow_id=wid())
            assert (first.pages, first.records, first.events) == (3, 10, 0)  # the backfill is quiet
            cursor = (await state_of(hub, conn, "gong.calls")).cursor
            webhook_call = fake.add_call("Negotiation", opportunity_id="006XYZ")
            synced_call = fake.add_call("Pricing follow-up", opportunity_id="006ABC")
            # the first call also arrives as Gong's webhook (per-connection token mode)
            r = await post_webhook(api, hub, "gong", conn.id, json.dumps({"callData": webhook_call}).encode())
            assert r.status_code == 200, r.text
            second = await run_sync(client, hub, conn, "gong.calls", workflow_id=wid())
        requested = [c.json().get("filter", {}).get("fromDateTime") for c in fake.calls("/v2/calls/extensive")]
    assert second.records >= 2 and second.changed == 2 and second.events == 1
    assert requested[-1] is not None and cursor is not None  # the second run read a window, not everything
    rows = await inbox_rows(hub, conn)
    assert sorted(r.event_id for r in rows) == sorted(f"call:{c['metaData']['id']}" for c in (webhook_call, synced_call))
    synced_row = next(r for r in rows if r.event_id == f"call:{synced_call['metaData']['id']}")
    mapped = map_event("gong", synced_row.event_type, synced_row.body, synced_row.content_type).events
    assert [(e.type, e.opportunity_id) for e in mapped] == [("call.recorded", "006ABC")]


async def test_docusign_envelope_completed_raises_contract_signed_once(client: Client, hub: Hub) -> None:
    with DocuSignFake() as fake:
        envelopes = fake.seed_envelopes(7)
        conn = await seed_connection(hub, "docusign", base_url=f"{fake.url}/restapi",
                                     config={"account_id": ACCOUNT_ID, "client_id": "ds-client", "user_id": "u1"},
                                     secrets={"access_token": "docusign-test-token"})
        async with sync_workers(client, hub, "docusign", limit=FAST):
            first = await run_sync(client, hub, conn, "docusign.envelopes", workflow_id=wid(), page_size=3)
            assert first.records >= 7 and first.pages >= 3 and first.events == 0
            assert len(await stored(hub, conn, "docusign.envelopes")) == 7
            fake.set_status(envelopes[2]["envelopeId"], "completed")
            fake.set_status(envelopes[4]["envelopeId"], "delivered")
            second = await run_sync(client, hub, conn, "docusign.envelopes", workflow_id=wid(), page_size=3)
            again = await run_sync(client, hub, conn, "docusign.envelopes", workflow_id=wid(), page_size=3)
    assert (second.changed, second.events) == (2, 1)
    assert (again.changed, again.events) == (0, 0)
    rows = await inbox_rows(hub, conn)
    assert [r.event_id for r in rows] == [f"{envelopes[2]['envelopeId']}:envelope-completed"]
    mapped = map_event("docusign", rows[0].event_type, rows[0].body, rows[0].content_type).events
    assert [(e.type, e.opportunity_id) for e in mapped] == [("contract.signed", "opp-2")]


async def test_sharepoint_documents_follow_the_delta_link_and_raise_document_changed(client: Client, hub: Hub) -> None:
    with GraphFake() as fake:
        for i in range(5):
            fake.add_file(f"Deals/ACME/doc-{i}.docx")
        conn = await seed_connection(hub, "microsoft", base_url=f"{fake.url}/v1.0",
                                     config={"drive_id": DRIVE_ID, "tenant_id": "t1", "client_id": "c1"},
                                     secrets={"access_token": "graph-test-token"})
        async with sync_workers(client, hub, "sharepoint"):
            first = await run_sync(client, hub, conn, "sharepoint.documents", workflow_id=wid(), page_size=3)
            assert first.records == 8 and first.pages == 3 and first.events == 0  # root, 2 folders, 5 files
            new = fake.add_file("Deals/ACME/proposal.docx")
            fake.delete(fake.find("Deals/ACME/doc-0.docx")["id"])
            second = await run_sync(client, hub, conn, "sharepoint.documents", workflow_id=wid(), page_size=3)
        delta_calls = fake.calls("/delta")
    assert second.pages == 1 and second.events == 2
    assert delta_calls[-1].query == {"token": ["8"]}  # the second run started from the first run's delta link
    rows = await inbox_rows(hub, conn)
    assert sorted(r.event_type for r in rows) == ["change.created", "change.deleted"]
    assert all(domain_types(r) == ["document.changed"] for r in rows)
    assert any(new["id"] in r.body.decode() for r in rows)


async def test_generic_list_pages_by_cursor_then_reads_only_what_changed_since_the_newest_record(
    client: Client, hub: Hub
) -> None:
    rows = [{"id": f"t{n}", "updated_at": f"2026-01-0{n + 1}T00:00:00Z", "n": n} for n in range(7)]
    with OAuthFake() as fake:
        fake.register_client(connectors_support.CLIENT_ID, connectors_support.CLIENT_SECRET)
        fake.serve_list("things", rows)
        access, refresh = fake.issue(connectors_support.CLIENT_ID)
        bare = await connectors_support.seed_connection(hub, fake.url, access_token=access, refresh_token=refresh)
        conn = await connectors_support.seed_connection(hub, fake.url, access_token=access, refresh_token=refresh,
                                                        config={PATH_KEY: "/things"})
        assert connection_models(bare) == {}  # offered only to a connection that names its list
        assert list(connection_models(conn)) == ["generic_oauth2.records"]
        async with sync_workers(client, hub, "generic_oauth2"):
            first = await run_sync(client, hub, conn, "generic_oauth2.records", workflow_id=wid(), page_size=3)
            rows[2]["n"] = 20
            rows[2]["updated_at"] = "2026-02-01T00:00:00Z"
            rows.append({"id": "t7", "updated_at": "2026-02-02T00:00:00Z", "n": 7})
            second = await run_sync(client, hub, conn, "generic_oauth2.records", workflow_id=wid(), page_size=3)
        asked = [{k: v[0] for k, v in c.query.items()} for c in fake.calls("^/api/things$", "GET")]
    assert (first.pages, first.records, first.changed) == (3, 7, 7)
    assert asked[:3] == [{"limit": "3"}, {"limit": "3", "cursor": "3"}, {"limit": "3", "cursor": "6"}]
    assert asked[3:] == [{"limit": "3", "updated_since": "2026-01-07T00:00:00Z"}]  # the newest record seen
    assert (second.pages, second.records, second.changed) == (1, 3, 2)  # t6 again (unchanged), t2 changed, t7 new
    assert (await stored(hub, conn, "generic_oauth2.records"))["t2"]["n"] == 20
