"""Canary proof: a client secret, a webhook secret and every token issued during a full connection life
(authorise, act, 401 → single refresh with rotation) appear in none of: the database files, the logs,
the API responses, the Temporal histories — raw, nor even after decrypting their payloads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sqlalchemy import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from activities.connector_types import ActionCall, connection_workflow_id
from hub.runtime import Hub
from hub.store.base import Base
from hub.vault import EncryptionCodec
from tests.conftest import bearer
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, FAST, RunActions, connection_workers
from tests.fakes.oauth_server import OAuthFake

WEBHOOK_CANARY = "whsec-canary-41d9e2"


@pytest.fixture
def idp() -> Iterator[OAuthFake]:
    with OAuthFake() as fake:
        fake.register_client(CLIENT_ID, CLIENT_SECRET)
        yield fake


def _payloads(message: Message) -> Iterator[Payload]:
    """Every Payload inside a protobuf message (history events nest them in many places)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            yield from _payloads(item)


async def _history_bytes(client: Client, hub: Hub, workflow_id: str) -> tuple[bytes, bytes]:
    """(raw history: protobuf + JSON as stored by Temporal, the same with every payload decrypted)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events) + history.to_json().encode()
    codec = EncryptionCodec(hub.vault)
    decoded = b""
    for event in history.events:
        payloads = list(_payloads(event))
        assert all(p.metadata.get("encoding") == b"binary/encrypted" for p in payloads)
        decoded += b"".join(p.SerializeToString() for p in await codec.decode(payloads))
    return raw, decoded


async def _database_text(hub: Hub, tmp_path: Path) -> bytes:
    """Every row of every table, plus (SQLite) the raw database files."""
    out = b""
    async with hub.db.session() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                out += repr(tuple(row)).encode()
    if hub.db.is_sqlite:
        files = list(tmp_path.glob("hub.db*"))
        assert files
        out += b"".join(f.read_bytes() for f in files)
    return out


async def test_canary_secrets_and_tokens_never_leave_the_vault(
    api: httpx.AsyncClient, client: Client, hub: Hub, admin_key: str, idp: OAuthFake,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen_responses = b""
    async with connection_workers(client, hub, limit=FAST):
        r = await api.post("/v1/connections", headers=bearer(admin_key), json={
            "provider": "generic_oauth2",
            "config": {"client_id": CLIENT_ID, "authorization_url": idp.authorization_url,
                       "token_url": idp.token_url, "base_url": idp.api_url},
            "credentials": {"client_secret": CLIENT_SECRET, "webhook_secrets": WEBHOOK_CANARY},
        })
        created = r.json()
        seen_responses += r.content
        async with httpx.AsyncClient() as browser:
            location = urlparse((await browser.get(created["authorization_url"])).headers["location"])
        back = {k: v[0] for k, v in parse_qs(location.query).items()}
        r = await api.get("/oauth/generic_oauth2/callback", params=back)
        assert r.json()["status"] == "active"
        seen_responses += r.content
        idp.expire_all()  # next calls get 401 → one refresh through the workflow, rotating the refresh token
        run_id = f"canary-{uuid.uuid4()}"
        calls = [ActionCall(org_id="acme", action="generic_oauth2.request", params={"path": f"/x/{i}"},
                            connection_id=created["id"]) for i in range(5)]
        results = await client.execute_workflow(RunActions.run, calls, id=run_id, task_queue=hub.settings.task_queue)
        assert all(not isinstance(x, str) for x in results), results
        for path in (f"/v1/connections/{created['id']}", "/v1/connections"):
            seen_responses += (await api.get(path, headers=bearer(admin_key))).content
    assert idp.token_calls == ["authorization_code", "refresh_token"]

    canaries = {CLIENT_SECRET, WEBHOOK_CANARY, *idp.access, *idp.refresh, *idp.dead_refresh}
    assert len(canaries) == 2 + 2 + 2  # 2 access tokens, 1 live + 1 rotated-out refresh token
    places = {
        "database": await _database_text(hub, tmp_path),
        "logs": caplog.text.encode(),
        "api responses": seen_responses,
    }
    for wid in (connection_workflow_id("acme", created["id"]), run_id):
        raw, decoded = await _history_bytes(client, hub, wid)
        places[f"history {wid}"] = raw
        places[f"decrypted history {wid}"] = decoded
    assert b"fqv1." in places["database"]  # the secrets are there — encrypted
    assert b"generic_oauth2.request" in places[f"decrypted history {run_id}"]  # decrypting really worked
    assert b"generic_oauth2.request" not in places[f"history {run_id}"]  # ... and was needed
    for where, blob in places.items():
        leaked = [c[:12] + "…" for c in canaries if c.encode() in blob]
        assert not leaked, f"{where} contains {leaked}"
