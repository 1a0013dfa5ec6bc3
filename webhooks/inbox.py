"""The receiving side of the inbox: connection credentials (cached) and group-committed inserts."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from hub.store import Database
from hub.store.connections import Connection, secret_owner
from hub.store.inbox import NewEvent, insert_new
from hub.store.secrets import get_secret
from hub.vault import Vault
from webhooks.receivers import Credentials, split_secrets

CACHE_TTL = 10.0
RELOAD_AFTER = 1.0
CACHE_SIZE = 10_000


@dataclass
class _Cached:
    creds: Credentials
    loaded: float


class CredentialCache:
    """Connections' webhook credentials, cached for ``ttl`` seconds.

    A verification failure may call ``get(..., reload=True)``: credentials older than a second are
    read again, so a secret rotated a moment ago is honoured at once and a flood of bad
    signatures costs at most one read per connection per second. Unknown connections are not
    cached (a flood of made-up ids cannot grow the cache), and the cache holds at most
    ``CACHE_SIZE`` connections.
    """

    def __init__(self, db: Database, vault: Vault, ttl: float = CACHE_TTL) -> None:
        self.db, self.vault, self.ttl = db, vault, ttl
        self._entries: dict[str, _Cached] = {}

    async def get(self, connection_id: str, reload: bool = False) -> tuple[Credentials | None, bool]:
        """The credentials (None for an unknown connection) and whether they were freshly read."""
        now = time.monotonic()
        hit = self._entries.get(connection_id)
        if hit is not None and now - hit.loaded < (RELOAD_AFTER if reload else self.ttl):
            return hit.creds, False
        creds = await self._load(connection_id)
        if creds is None:
            self._entries.pop(connection_id, None)
            return None, True
        if connection_id not in self._entries and len(self._entries) >= CACHE_SIZE:
            self._entries.pop(next(iter(self._entries)))
        self._entries[connection_id] = _Cached(creds, now)
        return creds, True

    async def _load(self, connection_id: str) -> Credentials | None:
        async with self.db.session() as session:
            conn = await session.get(Connection, connection_id)
            if conn is None:
                return None
            owner = secret_owner(conn.id)

            async def secret(name: str) -> str:
                return await get_secret(session, self.vault, owner, name) or ""

            keys = str(conn.config.get("gong_public_key") or "") + "\n" + await secret("gong_public_key")
            return Credentials(
                connection_id=conn.id,
                org_id=conn.org_id,
                provider=conn.provider,
                status=conn.status,
                config=dict(conn.config),
                webhook_secrets=split_secrets(await secret("webhook_secrets")),
                client_states=split_secrets(await secret("client_state")),
                public_keys=pem_blocks(keys),
            )


def pem_blocks(value: str) -> list[str]:
    """Split concatenated PEM public keys (several during Gong key rotation)."""
    marker = "-----END PUBLIC KEY-----"
    return [block.strip() + "\n" + marker for block in value.split(marker) if block.strip()]


class InboxWriter:
    """Commits inbox rows for concurrent requests together (group commit) and says which were new.

    A request's rows join the batch being gathered; a committer task takes every waiting request
    and commits their rows in one transaction; it ends when no request waits. Nothing is
    acknowledged before its batch has committed.

    On PostgreSQL up to four committers run at once (the database dedupes across concurrent
    batches: the insert skips existing keys); SQLite has a single writer, so one runs there (more
    only wait on SQLite's lock).
    """

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db, self.max_batch = db, max_batch
        self.max_inflight = 1 if db.is_sqlite else 4
        self._queue: deque[tuple[Sequence[NewEvent], asyncio.Future]] = deque()
        self._committers: set[asyncio.Task] = set()

    async def submit(self, events: Sequence[NewEvent]) -> list[bool]:
        """Commit ``events``; for each, True if it is new, False if it was already in the inbox."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((events, future))
        if len(self._committers) < self.max_inflight:
            task = asyncio.create_task(self._drain())
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let requests arriving in the same loop turn join the batch
        while self._queue:
            batch: list[tuple[Sequence[NewEvent], asyncio.Future]] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch):
                item = self._queue.popleft()
                batch.append(item)
                size += len(item[0])
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Sequence[NewEvent], asyncio.Future]]) -> None:
        unique: dict[tuple[str, str, str], NewEvent] = {}
        for events, _ in batch:
            for event in events:
                unique.setdefault(event.key, event)
        try:
            async with self.db.session() as session:
                inserted = await insert_new(session, list(unique.values()))
        except Exception as exc:  # noqa: BLE001 - every waiting request learns of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        claimed: set[tuple[str, str, str]] = set()
        for events, future in batch:
            flags = []
            for event in events:
                new = event.key in inserted and event.key not in claimed
                claimed.add(event.key)
                flags.append(new)
            if not future.done():
                future.set_result(flags)
