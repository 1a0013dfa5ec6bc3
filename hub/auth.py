"""API keys: ``fqh_<id>_<secret>``, stored as SHA-256 hashes, scoped to one org and one role.

A request's key is resolved through ``KeyCache``: a resolved key is reused for ``ttl`` seconds
(``HUB_API_KEY_CACHE_SECONDS``, default 5) without a database session. Revoking a key clears it
from the revoking process's cache at once; another process stops accepting it within ``ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.store.base import utcnow
from hub.store.orgs import ApiKey, Org, record_audit

if TYPE_CHECKING:
    from hub.store import Database

Role = Literal["admin", "crm", "viewer"]
ROLES: tuple[str, ...] = ("admin", "crm", "viewer")
KEY_PREFIX = "fqh"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id, its org and its role."""

    key_id: str
    org_id: str
    role: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_org(session: AsyncSession, org_id: str, name: str | None = None) -> Org:
    """Fetch an org, creating it if needed."""
    org = await session.get(Org, org_id)
    if org is None:
        org = Org(id=org_id, name=name or org_id, flags={})
        session.add(org)
        await session.flush()
    return org


async def create_key(session: AsyncSession, org_id: str, role: str, name: str = "", actor: str = "cli") -> str:
    """Create an API key for an org (created if missing); returns the full key, shown only once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    await ensure_org(session, org_id)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, org_id=org_id, role=role, secret_hash=_hash(secret), name=name))
    await record_audit(session, org_id, actor, "api_key.created", f"api_key/{key_id}", {"role": role})
    return f"{KEY_PREFIX}_{key_id}_{secret}"


#: ``last_used_at`` is written at most this often per key (it is to the minute, not to the request).
LAST_USED_RESOLUTION = timedelta(minutes=1)


async def authenticate(session: AsyncSession, presented: str) -> Principal | None:
    """The principal behind a presented key, or None if it is unknown, revoked or wrong.

    Records the key's last use (in the caller's transaction) when the stored time is older than
    ``LAST_USED_RESOLUTION``."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = await session.get(ApiKey, parts[1])
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) >= LAST_USED_RESOLUTION:
        row.last_used_at = now
    return Principal(key_id=row.id, org_id=row.org_id, role=row.role)


async def list_keys(session: AsyncSession, org_id: str) -> list[ApiKey]:
    """Every key of an org (revoked ones too), oldest first; never their secrets."""
    rows = await session.scalars(select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at, ApiKey.id))
    return list(rows)


async def revoke_key(session: AsyncSession, org_id: str | None, key_id: str, actor: str) -> ApiKey | None:
    """Revoke a key of ``org_id`` (any org if None); None if there is no such key. Revoking twice is a no-op.

    Call ``KeyCache.forget`` after the transaction commits."""
    row = await session.get(ApiKey, key_id)
    if row is None or (org_id is not None and row.org_id != org_id):
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await record_audit(session, row.org_id, actor, "api_key.revoked", f"api_key/{key_id}", {"role": row.role})
    return row


@dataclass
class _Resolved:
    principal: asyncio.Future[Principal | None]
    expires: float


class KeyCache:
    """Presented API keys resolved to principals, kept ``ttl`` seconds in this process.

    Entries are keyed by a hash of the whole presented key, so a wrong secret never hits. Unknown
    keys are not kept. Concurrent requests with the same key share one database lookup."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[str, _Resolved] = {}

    async def resolve(self, db: Database, presented: str) -> Principal | None:
        """The principal behind ``presented``: from the cache, else from the database (and then kept)."""
        digest = _hash(presented)
        now = self.clock()
        entry = self._entries.get(digest)
        if entry is None or entry.expires <= now:
            if len(self._entries) >= self.max_entries:
                self._entries = {d: e for d, e in self._entries.items() if e.expires > now}
            entry = self._entries[digest] = _Resolved(asyncio.ensure_future(self._load(db, presented)), now + self.ttl)
            entry.principal.add_done_callback(lambda f: self._drop_misses(digest, f))
        return await asyncio.shield(entry.principal)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after it was revoked), and any lookup still in flight."""
        self._entries = {d: e for d, e in self._entries.items() if _kept_after_revoking(e, key_id)}

    @staticmethod
    async def _load(db: Database, presented: str) -> Principal | None:
        async with db.session() as session:
            return await authenticate(session, presented)

    def _drop_misses(self, digest: str, done: asyncio.Future) -> None:
        entry = self._entries.get(digest)
        if entry is not None and entry.principal is done and (
            done.cancelled() or done.exception() is not None or done.result() is None
        ):
            del self._entries[digest]


def _kept_after_revoking(entry: _Resolved, key_id: str) -> bool:
    future = entry.principal
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    principal = future.result()
    return principal is not None and principal.key_id != key_id
