"""OAuth2 bookkeeping of connections: pending authorization states and versioned token storage.

A ``state`` sent to a provider is random, stored only as its SHA-256, bound to one org and one
connection, single-use and expiring; its PKCE verifier is stored encrypted. Tokens are stored with a
compare-and-set on ``Connection.token_version`` so that a retried or duplicated refresh never
overwrites newer tokens with older ones.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, Text, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow
from hub.store.connections import Connection, secret_owner
from hub.store.secrets import Secret, get_secret, put_secret
from hub.vault import Vault

STATE_TTL = timedelta(minutes=10)


class OAuthState(Base):
    """An authorization request in flight: which org/connection it is for and its PKCE verifier."""

    __tablename__ = "oauth_states"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    verifier: Mapped[str] = mapped_column(Text)  # vault ciphertext
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


async def create_state(
    session: AsyncSession, vault: Vault, conn: Connection, redirect_uri: str, verifier: str
) -> str:
    """Record a new authorization request for ``conn``; returns the ``state`` to send (shown once)."""
    state = secrets.token_urlsafe(32)
    digest = _hash(state)
    session.add(OAuthState(
        state_hash=digest, org_id=conn.org_id, connection_id=conn.id, provider=conn.provider,
        verifier=vault.encrypt(verifier, context=f"oauth_state/{digest}"), redirect_uri=redirect_uri,
        expires_at=utcnow() + STATE_TTL,
    ))
    return state


async def consume_state(session: AsyncSession, vault: Vault, provider: str, state: str) -> tuple[OAuthState, str] | None:
    """Take (and delete) the pending request behind ``state`` for ``provider``: (row, verifier), or None
    if it is unknown, already used, for another provider, or expired."""
    digest = _hash(state)
    row = await session.get(OAuthState, digest)
    if row is None:
        return None
    await session.delete(row)
    if row.provider != provider or row.expires_at <= utcnow():
        return None
    return row, vault.decrypt(row.verifier, context=f"oauth_state/{digest}")


async def purge_expired_states(session: AsyncSession) -> None:
    """Forget authorization requests whose time is up."""
    await session.execute(delete(OAuthState).where(OAuthState.expires_at <= utcnow()))


async def load_secrets(session: AsyncSession, vault: Vault, connection_id: str) -> dict[str, str]:
    """Every secret of a connection, decrypted, by name."""
    owner = secret_owner(connection_id)
    names = (await session.scalars(select(Secret.name).where(Secret.owner == owner))).all()
    return {name: value for name in names if (value := await get_secret(session, vault, owner, name)) is not None}


async def store_tokens(
    session: AsyncSession,
    vault: Vault,
    conn: Connection,
    *,
    from_version: int,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime | None,
    next_refresh_at: datetime | None,
) -> bool:
    """Store new tokens if the connection still holds version ``from_version`` (compare-and-set).

    Returns False (and stores nothing) if another writer got there first.
    """
    now = utcnow()
    changed = await session.execute(
        update(Connection)
        .where(Connection.id == conn.id, Connection.token_version == from_version)
        .values(
            token_version=from_version + 1, access_expires_at=expires_at, last_refresh_at=now,
            next_refresh_at=next_refresh_at, refresh_pending_since=None, last_error=None, status="active",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]  # DML: a CursorResult
        return False
    owner = secret_owner(conn.id)
    await put_secret(session, vault, conn.org_id, owner, "access_token", access_token)
    if refresh_token:
        await put_secret(session, vault, conn.org_id, owner, "refresh_token", refresh_token)
    await session.refresh(conn)
    return True


DEMO_NOTE = "not connected yet: create a connection of this provider with its credentials (see README)"


async def add_pending_connections(session: AsyncSession, org_id: str, providers: list[tuple[str, str, str]]) -> int:
    """Give an org one ``pending_auth`` connection per (provider, display name, auth mode) it has none of
    (the demo org shows every provider and its status this way); returns how many were added."""
    have = set((await session.scalars(select(Connection.provider).where(Connection.org_id == org_id))).all())
    added = [
        Connection(org_id=org_id, provider=key, name=name, auth_mode=mode, config={}, status="pending_auth",
                   last_error=DEMO_NOTE)
        for key, name, mode in providers if key not in have
    ]
    session.add_all(added)
    return len(added)
