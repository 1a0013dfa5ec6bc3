"""FastAPI dependencies shared by every router: the runtime, a DB session, the caller's key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from hub.auth import Principal
from hub.problems import Problem
from hub.runtime import Hub, TemporalUnavailable


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


async def current_key(request: Request, hub: HubDep) -> Principal:
    """The principal behind ``Authorization: Bearer <key>``; 401 if absent or invalid."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", title="Unauthorized")
    principal = await hub.keys.resolve(hub.db, token.strip())
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
