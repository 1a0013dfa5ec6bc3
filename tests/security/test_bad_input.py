"""Finding 7: bad input gets a clear 4xx — never a 500, never a half-write."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from hub.http_server import MAX_HEAD_BYTES, server_config
from hub.runtime import Hub
from hub.store.connections import Connection
from tests.conftest import bearer
from tests.routes.test_resources import RULE_YAML
from tests.webhooks.conftest import inbox_count, make_connection, post_signed

DEEP = b"[" * 100_000 + b"]" * 100_000


async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        await writer.drain()
    except ConnectionError:
        pass
    data = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return data


async def test_request_heads_are_capped_with_431(unused_tcp_port: int) -> None:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass  # the body read whole, as a route would
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = uvicorn.Server(server_config(app, "127.0.0.1", unused_tcp_port, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        ok = await _raw_request(unused_tcp_port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 8000 + b"\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        body = b"x" * (MAX_HEAD_BYTES * 3)  # a large body in the same write as its head is not a head
        big = await _raw_request(unused_tcp_port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
        assert big.startswith(b"HTTP/1.1 200"), big[:80]
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)  # a body's tail is not a head
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nxx" % (len(body) + 2))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(body)
        await writer.drain()
        tail = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert tail.startswith(b"HTTP/1.1 200"), tail[:80]
        partial = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (MAX_HEAD_BYTES * 2)  # never finished
        refused = await _raw_request(unused_tcp_port, partial)
        assert refused.startswith(b"HTTP/1.1 431") and b"problem+json" in refused
    finally:
        server.should_exit = True
        await task


def _signed(provider: str, secret: str) -> dict[str, str]:
    now = str(int(time.time()))
    if provider == "slack":
        digest = hmac.new(secret.encode(), f"v0:{now}:".encode() + DEEP, hashlib.sha256).hexdigest()
        return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": now, "X-Slack-Signature": f"v0={digest}"}
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"msg_1.{now}.".encode() + DEEP, hashlib.sha256).digest()
    return {"Content-Type": "application/json", "webhook-id": "msg_1", "webhook-timestamp": now,
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


@pytest.mark.parametrize("provider", ["stripe", "slack", "docusign", "gong", "microsoft", "generic"])
async def test_deeply_nested_webhook_bodies_get_400(api: httpx.AsyncClient, hub: Hub, provider: str) -> None:
    secrets = "whsec_a2tra2tra2tra2tra2tra2tra2tr" if provider == "generic" else "s3cret"
    connection = await make_connection(hub, provider, secrets=secrets, client_state="s3cret")
    if provider == "microsoft":  # read for its clientState before any signature can be checked
        r = await api.post(f"/webhooks/microsoft/{connection}", content=DEEP, headers={"Content-Type": "application/json"})
    elif provider == "gong":
        r = await api.post(f"/webhooks/gong/{connection}", content=DEEP,
                           headers={"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
    elif provider in ("slack", "generic"):  # signed by hand: the test kit's signer reads the body
        r = await api.post(f"/webhooks/{provider}/{connection}", content=DEEP, headers=_signed(provider, secrets))
    else:
        r = await post_signed(api, hub, provider, connection, DEEP, "application/json")
    assert r.status_code == 400 and r.json()["reason"] == "malformed_event", r.text
    assert await inbox_count(hub) == 0


async def test_deeply_nested_resources_get_422(api: httpx.AsyncClient, admin_key: str) -> None:
    for body, ctype in ((DEEP, "application/json"), (b"a: " + b"[" * 5000 + b"]" * 5000, "application/yaml")):
        r = await api.post("/v1/resources:validate", content=body, headers={**bearer(admin_key), "Content-Type": ctype})
        assert r.status_code == 200 and not r.json()["valid"], r.text  # the report of an invalid document
        assert "nested deeper than 32 levels" in r.json()["errors"][0]["message"]
        r = await api.put("/v1/rules/deep", content=body, headers={**bearer(admin_key), "Content-Type": ctype})
        assert r.status_code == 422 and "nested deeper" in r.text, r.text
    nested = {"title": "x"}
    for _ in range(200):
        nested = {"a": nested}
    rule = {"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": "deep"},
            "spec": {"on": "payment.received", "do": [{"http.post": {"url": "https://example.com", "json": nested}}]}}
    r = await api.post("/v1/rules:test", json={"event": {"type": "payment.received"}, "rules": [rule]},
                       headers=bearer(admin_key))
    assert r.status_code == 422 and "nested deeper" in r.text, r.text


async def test_huge_integers_in_version_and_cursor_get_422(api: httpx.AsyncClient, admin_key: str) -> None:
    h = bearer(admin_key)
    await api.put("/v1/rules/big-deal-to-acquire", content=RULE_YAML, headers={**h, "Content-Type": "application/yaml"})
    big = "9" * 30
    for url in (f"/v1/rules/big-deal-to-acquire?version={big}", f"/v1/rules/big-deal-to-acquire/versions?cursor={big}",
                f"/v1/rules/big-deal-to-acquire/versions?cursor={'9' * 5000}"):
        r = await api.get(url, headers=h)
        assert r.status_code == 422, (url[:60], r.text[:200])
    r = await api.post(f"/v1/rules/big-deal-to-acquire:test?version={big}", json={"event": {"type": "x"}}, headers=h)
    assert r.status_code == 422


async def connection_count(hub: Hub) -> int:
    async with hub.db.session() as session:
        return await session.scalar(select(func.count()).select_from(Connection))


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"provider": "stripe", "config": {"base_url": "https://{api.stripe.com"}, "credentials": {"api_key": "sk_x"}},
         "base_url"),
        ({"provider": "generic_oauth2", "config": {"client_id": "c", "authorization_url": "https://idp.example/a",
          "token_url": "https://idp.example/t", "base_url": "https://api.example"},
          "credentials": {"client_secret": "s", "webhook_secrets": "whsec_not base64!"}}, "base64"),
    ],
)
async def test_bad_connections_are_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, hub: Hub, admin_key: str, body: dict, says: str
) -> None:
    r = await api.post("/v1/connections", json=body, headers=bearer(admin_key))
    assert r.status_code == 422 and says in r.text, r.text
    assert await connection_count(hub) == 0
    listed = await api.get("/v1/connections", headers=bearer(admin_key))
    assert listed.status_code == 200


async def test_authorize_without_client_id_gets_422(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    async with hub.db.session() as session:  # a row made before client_id was required
        conn = Connection(org_id="acme", provider="generic_oauth2", name="g", auth_mode="oauth2_code_pkce",
                          config={"authorization_url": "https://idp.example/auth", "token_url": "https://idp.example/t"},
                          status="needs_reauth")
        session.add(conn)
        await session.flush()
        connection_id = conn.id
    r = await api.post(f"/v1/connections/{connection_id}:authorize", headers=bearer(admin_key))
    assert r.status_code == 422 and "client_id" in r.text, r.text


async def test_malformed_codec_json_gets_400(api: httpx.AsyncClient, admin_key: str) -> None:
    for body in (b"{", b'{"payloads": 5}', json.dumps({"payloads": [{"metadata": 1}]}).encode()):
        r = await api.post("/codec/decode", content=body, headers={**bearer(admin_key), "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
