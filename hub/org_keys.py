"""Per-org data keys for Temporal payloads (envelope encryption).

Each org has a random AES-256 data key, stored only wrapped (sealed) by the vault keys in
``org_data_keys``. The payload codec (``hub.vault.EncryptionCodec``) seals a workflow's payloads
under the key of the org its workflow id names (``opportunity/{org}/…``, ``connection/{org}/…``,
``sync/{org}/…``; ``webhook/{provider}/{connection}/…`` through the connection's org) and writes the
org into the payload's metadata, bound to the ciphertext. ``/codec`` decodes an org's payloads for
that org's admin only; ``shred`` deletes an org's data keys, after which nothing sealed under them
can be read again (by any process once its cache is gone: restart, or ``CACHE_SECONDS``).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select

from hub.store import Database
from hub.store.connections import Connection
from hub.store.orgs import OrgDataKey
from hub.vault import Vault

#: how long a process keeps an org's unwrapped key (a shred elsewhere takes effect within this)
CACHE_SECONDS = 300.0
ORG_PREFIXES = ("opportunity/", "connection/", "sync/")
WEBHOOK_PREFIX = "webhook/"


def _context(org_id: str, key_id: str) -> str:
    return f"org-data-key/{org_id}/{key_id}"


class OrgKeyring:
    """The orgs' data keys, created on first use, unwrapped by the vault and kept briefly in memory."""

    def __init__(self, db: Database, vault: Vault, ttl: float = CACHE_SECONDS) -> None:
        self.db = db
        self.vault = vault
        self.ttl = ttl
        self._keys: dict[tuple[str, str], tuple[AESGCM, float]] = {}
        self._current: dict[str, tuple[str, float]] = {}
        self._connection_orgs: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def sealing_key(self, org_id: str) -> tuple[str, AESGCM]:
        """(key id, key) new payloads of ``org_id`` are sealed with (its newest); created on first use."""
        current = self._current.get(org_id)
        if current is not None and current[1] > time.monotonic() and (org_id, current[0]) in self._keys:
            return current[0], self._keys[(org_id, current[0])][0]
        async with self._lock:
            row = await self._newest(org_id) or await self._create(org_id)
            aead = self._remember(row)
            self._current[org_id] = (row.key_id, time.monotonic() + self.ttl)
        return row.key_id, aead

    async def opening_key(self, org_id: str, key_id: str) -> AESGCM | None:
        """The key a payload names, or None if the org's keys were shredded (or never existed)."""
        cached = self._keys.get((org_id, key_id))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self.db.sessions() as session:
            row = await session.get(OrgDataKey, (org_id, key_id))
        return None if row is None else self._remember(row)

    async def org_of(self, workflow_id: str | None) -> str | None:
        """The org a workflow belongs to, from its id; None for the hub's own workflows."""
        if not workflow_id:
            return None
        if workflow_id.startswith(ORG_PREFIXES):
            org = workflow_id.split("/", 2)[1]
            return org or None
        if workflow_id.startswith(WEBHOOK_PREFIX):
            parts = workflow_id.split("/", 3)
            return await self._connection_org(parts[2]) if len(parts) == 4 else None
        return None

    async def shred(self, org_id: str) -> int:
        """Delete the org's data keys (crypto-shredding its payloads); returns how many were deleted."""
        async with self.db.session() as session:
            rows = list(await session.scalars(select(OrgDataKey.key_id).where(OrgDataKey.org_id == org_id)))
            await session.execute(delete(OrgDataKey).where(OrgDataKey.org_id == org_id))
        self._keys = {k: v for k, v in self._keys.items() if k[0] != org_id}
        self._current.pop(org_id, None)
        return len(rows)

    async def _connection_org(self, connection_id: str) -> str | None:
        org = self._connection_orgs.get(connection_id)
        if org is None:
            async with self.db.sessions() as session:
                org = await session.scalar(select(Connection.org_id).where(Connection.id == connection_id))
            if org is not None:  # a connection never changes org: keep it
                self._connection_orgs[connection_id] = org
        return org

    async def _newest(self, org_id: str) -> OrgDataKey | None:
        async with self.db.sessions() as session:
            return await session.scalar(
                select(OrgDataKey).where(OrgDataKey.org_id == org_id)
                .order_by(OrgDataKey.created_at.desc(), OrgDataKey.key_id.desc()).limit(1)
            )

    async def _create(self, org_id: str) -> OrgDataKey:
        key_id = f"o{secrets.token_hex(4)}"
        raw = AESGCM.generate_key(bit_length=256)
        wrapped = self.vault.encrypt(base64.urlsafe_b64encode(raw).decode(), context=_context(org_id, key_id))
        async with self.db.session() as session:
            session.add(OrgDataKey(org_id=org_id, key_id=key_id, wrapped=wrapped))
        newest = await self._newest(org_id)  # another process may have made one meanwhile: every one opens
        assert newest is not None
        return newest

    def _remember(self, row: OrgDataKey) -> AESGCM:
        raw = base64.urlsafe_b64decode(self.vault.decrypt(row.wrapped, context=_context(row.org_id, row.key_id)))
        aead = AESGCM(raw)
        self._keys[(row.org_id, row.key_id)] = (aead, time.monotonic() + self.ttl)
        return aead
