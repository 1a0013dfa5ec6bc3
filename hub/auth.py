"""API keys: ``fqh_<id>_<secret>``, stored as SHA-256 hashes, scoped to one org and one role."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from hub.store.orgs import ApiKey, Org, record_audit

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


async def authenticate(session: AsyncSession, presented: str) -> Principal | None:
    """The principal behind a presented key, or None if it is unknown, revoked or wrong."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = await session.get(ApiKey, parts[1])
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
        return None
    return Principal(key_id=row.id, org_id=row.org_id, role=row.role)
