"""Console sessions: an API key exchanged for a short-lived token, carried in an httpOnly cookie.

The token is the session sealed by the vault (AES-GCM, so it cannot be forged or read), naming the key it
came from, its expiry and its CSRF token. It stands for that key: a revoked key ends its sessions at once,
and the key's org and role are read from the key, never from the token.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from hub.auth import Principal
from hub.store.orgs import ApiKey
from hub.vault import Vault, VaultError

PREFIX = "fqs."
COOKIE = "fqh_console"
TTL = timedelta(minutes=30)
_CONTEXT = "console-session"


@dataclass(frozen=True)
class ConsoleSession:
    """An open session: the key behind it, when it ends, and the token every form must carry."""

    key_id: str
    expires_at: datetime
    csrf: str


def open_session(vault: Vault, principal: Principal, now: datetime | None = None) -> tuple[str, ConsoleSession]:
    """A new session for an authenticated key: its token (cookie value) and what it holds."""
    expires = (now or datetime.now(UTC)) + TTL
    session = ConsoleSession(principal.key_id, expires, secrets.token_urlsafe(24))
    payload = json.dumps({"k": session.key_id, "exp": int(expires.timestamp()), "csrf": session.csrf})
    return PREFIX + vault.encrypt(payload, _CONTEXT).rstrip("="), session


def read_session(vault: Vault, token: str, now: datetime | None = None) -> ConsoleSession | None:
    """The session a token holds, or None if it is not one, was tampered with or has expired."""
    if not token.startswith(PREFIX):
        return None
    sealed = token.removeprefix(PREFIX)
    try:
        data = json.loads(vault.decrypt(sealed + "=" * (-len(sealed.rsplit(".", 1)[-1]) % 4), _CONTEXT))
    except (VaultError, ValueError):
        return None
    expires = datetime.fromtimestamp(data["exp"], UTC)
    if expires <= (now or datetime.now(UTC)):
        return None
    return ConsoleSession(data["k"], expires, data["csrf"])


async def authenticate_session(session: AsyncSession, vault: Vault, token: str) -> Principal | None:
    """The principal behind a session token, or None if the token or its key is no longer valid."""
    opened = read_session(vault, token)
    if opened is None:
        return None
    row = await session.get(ApiKey, opened.key_id)
    if row is None or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, org_id=row.org_id, role=row.role)
