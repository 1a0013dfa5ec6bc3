"""FastAPI dependencies shared by every router: the runtime, a DB session, the caller's key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from hub.auth import Principal
from hub.problems import Problem
from hub.runtime import Hub, TemporalUnavailable
from hub.sessions import PREFIX as SESSION_PREFIX
from hub.sessions import authenticate_session


def get_hub(request: Request) -> Hub:
    """The runtime the app was built with."""
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


async def get_session(hub: HubDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    async with hub.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_temporal(hub: HubDep) -> Client:
    """The Temporal client, or 503 if Temporal is unreachable."""
    try:
        return await hub.temporal()
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc), title="Temporal unavailable") from exc


TemporalDep = Annotated[Client, Depends(get_temporal)]


API_KEY = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    bearerFormat="fqh_<id>_<secret>",
    description="An API key (`fulqrun-hub keys create`), scoped to one org with the role admin, crm or viewer; "
    "a console session token (`fqs.…`) stands for the key it was opened with.",
)


async def bearer_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, or None: the one reader of that header (``current_key`` and the
    idempotency middleware)."""
    credentials = await API_KEY(request)
    token = credentials.credentials.strip() if credentials else ""
    return token or None


async def current_key(
    hub: HubDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(API_KEY)]
) -> Principal:
    """The principal behind ``Authorization: Bearer <key>`` (or a console session token); 401 if absent or invalid."""
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", title="Unauthorized")
    if token.startswith(SESSION_PREFIX):
        async with hub.db.session() as session:
            principal = await authenticate_session(session, hub.vault, token)
    else:
        principal = await hub.keys.resolve(hub.db, token)
    if principal is None:
        raise Problem(401, "invalid or revoked API key", title="Unauthorized")
    return principal


CurrentKey = Annotated[Principal, Depends(current_key)]


def require_role(*roles: str) -> Callable:
    """A dependency that admits only keys with one of ``roles`` (403 otherwise)."""

    async def check(principal: CurrentKey) -> Principal:
        if principal.role not in roles:
            raise Problem(
                403, f"role {principal.role!r} may not do this; needs one of: {', '.join(roles)}"
            )
        return principal

    return check


AdminKey = Annotated[Principal, Depends(require_role("admin"))]
WriterKey = Annotated[Principal, Depends(require_role("admin", "crm"))]
ReaderKey = Annotated[Principal, Depends(require_role("admin", "crm", "viewer"))]
