"""The scheme registry is the only dispatch: a provider added as one catalogue entry + one module (this one) is
verified, split, acknowledged and mapped end to end by the real router and relay; HubSpot, a real provider, with
its documented signed payload."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from connectors import catalogue as catalogue_module
from connectors import events
from connectors.catalogue import CATALOGUE_PATH, catalogue
from connectors.events import (
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    WebhookScheme,
    parse_json,
    webhook_scheme,
)
from connectors.signing import SignatureError
from hub.runtime import Hub
from tests.conftest import shared_data
from tests.webhooks.conftest import inbox_rows, make_connection, post_signed
from webhooks.relay import Relay

ROOT = Path(__file__).resolve().parents[2]
ACME_ENTRY = f"""
acme:
  display_name: Acme (a provider only this test knows)
  auth_mode: api_key
  base_url: https://api.acme.test
  rate_limit: {{per_second: 5}}
  webhook: {{signing: acme_hmac}}
  module: {__name__}
"""


@webhook_scheme
class AcmeWebhooks(WebhookScheme):
    """``X-Acme-Signature: hex(HMAC-SHA256(secret, body))``; a batch ``{"events": [{"id", "kind"}...]}``."""

    name = "acme_hmac"
    description = "X-Acme-Signature hex HMAC-SHA256 of the body"
    ack_status = 202

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        presented = delivery.headers.get("x-acme-signature")
        if not presented:
            raise SignatureError("missing_signature")
        if not any(hmac.compare_digest(presented, _mac(s, delivery.body)) for s in creds.webhook_secrets):
            raise SignatureError("signature_mismatch")

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        doc = parse_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
            raise MalformedEvent("an Acme delivery has an 'events' list")
        return [InboxEvent(str(e["id"]), str(e["kind"]), json.dumps(e).encode(), "application/json")
                for e in doc["events"]]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        if event_type != "deal.won":
            return Mapped(ignored=f"Acme {event_type} is not mapped")
        return Mapped(events=[DomainEvent(type="acme.deal_won", data=json.loads(body))])

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        return body, {"content-type": content_type, "x-acme-signature": _mac(creds.first_secret(), body)}


def _mac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def acme_in_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped catalogue plus the ``acme`` entry, for this test only."""
    path = tmp_path / "providers.yaml"
    path.write_text(CATALOGUE_PATH.read_text() + ACME_ENTRY)
    monkeypatch.setattr(catalogue_module, "CATALOGUE_PATH", path)
    catalogue.cache_clear()
    events.reset()
    yield
    monkeypatch.undo()
    catalogue.cache_clear()
    events.reset()


async def test_a_provider_registered_in_its_own_module_goes_through_router_and_relay(
    acme_in_catalogue: None, api: httpx.AsyncClient, hub: Hub, task_queue: str
) -> None:
    assert events.for_provider("acme") is events.SCHEMES["acme_hmac"]
    con = await make_connection(hub, "acme")
    batch = json.dumps({"events": [{"id": "a1", "kind": "deal.won", "amount": 5}, {"id": "a2", "kind": "ping"}]})

    r = await post_signed(api, hub, "acme", con, batch.encode(), "application/json")
    assert r.status_code == 202 and r.json() == {"accepted": 2, "duplicates": 0}  # the scheme's ack status

    forged = await api.post(f"/webhooks/acme/{con}", content=batch, headers={"x-acme-signature": "00" * 32})
    assert forged.status_code == 401 and forged.json()["reason"] == "signature_mismatch"

    await Relay(hub, task_queue=task_queue).drain()  # nothing needs a workflow: no opportunity, no rule
    rows = {r.event_id: r for r in await inbox_rows(hub, connection_id=con)}
    assert set(rows) == {"a1", "a2"} and rows["a1"].event_type == "deal.won"
    assert rows["a1"].status == "ignored" and rows["a1"].domain_types == ["acme.deal_won"]  # mapped by map()
    assert rows["a2"].outcome["reason"] == "Acme ping is not mapped"


async def test_unregistered_provider_is_unknown(api: httpx.AsyncClient, hub: Hub) -> None:
    r = await api.post("/webhooks/acme/con_x", content=b"{}")
    assert r.status_code == 404 and r.json()["reason"] == "unknown_provider"


def test_no_dispatch_file_names_a_provider() -> None:
    """The router, relay, inbox, CLI and sync activity find the scheme in the registry; none names a provider."""
    names = "|".join(map(re.escape, catalogue().providers))
    quoted = re.compile(rf"""["']({names})["']""")
    for rel in ("webhooks/router.py", "webhooks/relay.py", "webhooks/inbox.py", "app/webhooks_cli.py",
                "activities/sync.py", "connectors/events.py"):
        found = quoted.findall((ROOT / rel).read_text())
        assert not found, f"{rel} names providers {found}"


# --- HubSpot: a real provider, its documented payload and signature -----------------------------------------

HUBSPOT_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"  # HubSpot's documented example client secret


def _hubspot_v1_vector() -> dict:
    spec = json.loads(shared_data("signing_vectors", "hubspot_signature_vectors.json").read_text())
    return next(v for v in spec["vectors"] if v["version"] == "v1" and v["raw_body"].startswith("[{"))


async def test_hubspot_documented_delivery_is_verified_and_stored(api: httpx.AsyncClient, hub: Hub) -> None:
    body = shared_data("webhooks", "hubspot", "contact.creation.json").read_bytes()
    vector = _hubspot_v1_vector()
    assert body == vector["raw_body"].encode()  # the bytes HubSpot's example signature covers
    con = await make_connection(hub, "hubspot", secrets=HUBSPOT_SECRET)
    headers = {"content-type": "application/json", "x-hubspot-signature": vector["expected"],
               "x-hubspot-signature-version": "v1"}

    r = await api.post(f"/webhooks/hubspot/{con}", content=body, headers=headers)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}
    [row] = await inbox_rows(hub, connection_id=con)
    assert (row.provider, row.event_id, row.event_type) == ("hubspot", "1", "contact.creation")
    assert json.loads(row.body)["objectId"] == 123
    assert "x-hubspot-signature" not in row.headers

    tampered = await api.post(f"/webhooks/hubspot/{con}", content=body.replace(b"123", b"124"), headers=headers)
    assert tampered.status_code == 401 and tampered.json()["reason"] == "signature_mismatch"


async def test_hubspot_v3_signature_covers_the_public_url(api: httpx.AsyncClient, hub: Hub) -> None:
    body = shared_data("webhooks", "hubspot", "contact.creation.json").read_bytes()
    con = await make_connection(hub, "hubspot", secrets=HUBSPOT_SECRET)
    r = await post_signed(api, hub, "hubspot", con, body, "application/json")  # v3, signed for hub.test's URL
    assert r.status_code == 200 and r.json()["accepted"] == 1
    creds = Credentials(con, "acme", "hubspot", "active", {}, [HUBSPOT_SECRET])
    _, headers = events.get("hubspot").sign(body, "application/json", creds, "https://elsewhere.test/x",
                                             int(time.time()))
    moved = await api.post(f"/webhooks/hubspot/{con}", content=body, headers=headers)
    assert moved.status_code == 401 and moved.json()["reason"] == "signature_mismatch"  # signed for another URL
    assert events.get("hubspot").map("contact.creation", body, "application/json").ignored
