"""``Idempotency-Key`` for every write of the /v1 API: a retried request gets the first answer.

An ASGI middleware, so each route gets it without code of its own. For a POST/PUT/PATCH/DELETE
under ``/v1/`` carrying the header and a valid API key, the key is claimed in
``idempotency_keys`` (scoped to the caller's org and API key, ``scoped_key``) before the route runs;
so a replay only ever goes back to the key whose request was authorised the first time:

- a retry with the same key and the same request (method, path, query, body) replays the stored
  status and body, with ``Idempotent-Replayed: true``;
- the same key with a different request is 422; a retry while the first is still running is 409;
- answers >= 500 are not kept (the claim is released), so a failed request can be retried;
- keys expire after ``ttl``. Stored bodies are sealed by the vault (they may hold secrets).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, bindparam, delete, insert, update
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.deps import bearer_key
from hub.problems import problem_response
from hub.runtime import Hub
from hub.store.base import utcnow
from hub.store.orgs import IdempotencyRecord

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER = "idempotency-key"
MAX_KEY_LENGTH = 200
IN_FLIGHT = 0


@dataclass(frozen=True)
class Stored:
    """A finished first answer to replay."""

    status: int
    content_type: str
    body: bytes


class KeyConflict(Exception):
    """The key cannot be used for this request (status and detail for the problem answer)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    """Fingerprint of a request: a key may only be reused for the identical request."""
    h = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def scoped_key(api_key_id: str, key: str) -> str:
    """The stored key: the caller's API key id and a hash of the ``Idempotency-Key`` it sent.

    Answers belong to the API key that made them: another key (even of the same org, even an admin's)
    sending the same ``Idempotency-Key`` gets a fresh claim and its own authorisation, never a replay."""
    return f"{api_key_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def _context(org_id: str, key: str) -> str:
    return f"idempotency/{org_id}/{key}"


_MINE = (IdempotencyRecord.org_id == bindparam("b_org")) & (IdempotencyRecord.key == bindparam("b_key"))
_CLAIM = insert(IdempotencyRecord)  # statements built once: they run on every write request
_ANSWER = update(IdempotencyRecord).where(_MINE)
_RELEASE = delete(IdempotencyRecord).where(_MINE)


def _insert_claim(conn: Connection, org_id: str, key: str, fingerprint: str) -> None:
    conn.execute(_CLAIM, {"org_id": org_id, "key": key, "request_hash": fingerprint, "status_code": IN_FLIGHT,
                          "response": {}})  # fmt: skip


def _keep_answer(conn: Connection, org_id: str, key: str, status: int, response: dict | None) -> None:
    """The first answer kept for replays (``response``), or the claim released (None)."""
    if response is None:
        conn.execute(_RELEASE, {"b_org": org_id, "b_key": key})
    else:
        conn.execute(_ANSWER, {"b_org": org_id, "b_key": key, "status_code": status, "response": response})


async def claim(hub: Hub, org_id: str, key: str, fingerprint: str, ttl: timedelta) -> Stored | None:
    """Claim the key for this request (None), or return the stored first answer; KeyConflict if unusable.

    The claim and the answer are one short write each (``Database.write``): they are on every write request's path."""
    for _ in range(2):
        try:
            await hub.db.write(_insert_claim, org_id, key, fingerprint)
            return None
        except IntegrityError:
            pass
        async with hub.db.session() as session:
            row = await session.get(IdempotencyRecord, (org_id, key))
            if row is None:
                continue  # released meanwhile: claim again
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=utcnow().tzinfo)
            if utcnow() - created > ttl:
                await session.delete(row)
                continue
            if row.request_hash != fingerprint:
                raise KeyConflict(422, "Idempotency-Key was already used for a different request")
            if row.status_code == IN_FLIGHT:
                raise KeyConflict(409, "a request with this Idempotency-Key is still in progress; retry later")
            body = hub.vault.decrypt(row.response["body"], context=_context(org_id, key)).encode()
            return Stored(row.status_code, row.response["content_type"], body)
    raise KeyConflict(409, "Idempotency-Key is being claimed concurrently; retry later")


async def finish(hub: Hub, org_id: str, key: str, status: int, content_type: str, body: bytes) -> None:
    """Keep the first answer (< 500) for replays, or release the claim so the request can be retried."""
    response = None
    if status < 500:
        sealed = hub.vault.encrypt(body.decode("utf-8", errors="replace"), context=_context(org_id, key))
        response = {"content_type": content_type, "body": sealed}
    await hub.db.write(_keep_answer, org_id, key, status, response)


class IdempotencyMiddleware:
    """ASGI middleware giving every /v1 write ``Idempotency-Key`` semantics (see the module doc)."""

    def __init__(self, app: ASGIApp, ttl: timedelta = timedelta(hours=24)) -> None:
        self.app = app
        self.ttl = ttl

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        key = headers.get(HEADER, "").strip()
        if not key:
            return await self.app(scope, receive, send)
        if len(key) > MAX_KEY_LENGTH:
            return await problem_response(400, f"Idempotency-Key longer than {MAX_KEY_LENGTH} characters")(
                scope, receive, send
            )
        hub: Hub = scope["app"].state.hub
        token = await bearer_key(Request(scope))
        principal = None
        if token:
            principal = await hub.keys.resolve(hub.db, token)
        if principal is None:  # the route answers 401 itself
            return await self.app(scope, receive, send)

        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        fingerprint = request_hash(scope["method"], scope["path"], scope.get("query_string", b""), body)
        key = scoped_key(principal.key_id, key)
        try:
            stored = await claim(hub, principal.org_id, key, fingerprint, self.ttl)
        except KeyConflict as exc:
            return await problem_response(exc.status, exc.detail)(scope, receive, send)
        if stored is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": stored.status,
                    "headers": [
                        (b"content-type", stored.content_type.encode()),
                        (b"content-length", str(len(stored.body)).encode()),
                        (b"idempotent-replayed", b"true"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": stored.body})
            return

        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        content_type = "application/json"
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type", content_type)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        finally:
            await finish(hub, principal.org_id, key, status, content_type, b"".join(chunks))

