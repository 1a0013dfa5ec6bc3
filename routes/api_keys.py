"""``/v1/api-keys``: an org's API keys — create (shown once), list with last use, revoke (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from hub.auth import Role, create_key, revoke_key
from hub.deps import AdminKey, HubDep, SessionDep
from hub.problems import Problem
from hub.store.orgs import ApiKey

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    """A new key of the caller's org."""

    role: Role
    name: str = Field(default="", max_length=200)


class ApiKeyPublic(BaseModel):
    """A key as the API shows it: never its secret. ``last_used_at`` is to the minute."""

    id: str
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """A new key, with the full key shown this once."""

    key: str


class ApiKeyPage(BaseModel):
    """One page of keys, oldest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[ApiKeyPublic]
    next_cursor: str | None


@router.post("", status_code=201)
async def create_api_key(body: ApiKeyCreate, session: SessionDep, key: AdminKey) -> ApiKeyCreated:
    """Create a key for the caller's org; the response holds the key, shown only this once."""
    full = await create_key(session, key.org_id, body.role, body.name, actor=key.key_id)
    row = await session.get(ApiKey, full.split("_", 2)[1])
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row, from_attributes=True).model_dump(), key=full)


@router.get("")
async def list_api_keys(
    session: SessionDep,
    key: AdminKey,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> ApiKeyPage:
    """The org's keys (revoked ones too) with their role, creation, last use and revocation."""
    query = select(ApiKey).where(ApiKey.org_id == key.org_id)
    if cursor:
        query = query.where(ApiKey.id > cursor)
    rows = (await session.scalars(query.order_by(ApiKey.id).limit(limit + 1))).all()
    page = rows[:limit]
    return ApiKeyPage(
        items=[ApiKeyPublic.model_validate(r, from_attributes=True) for r in page],
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


@router.delete("/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, session: SessionDep, hub: HubDep, key: AdminKey) -> Response:
    """Revoke a key: this API process refuses it (401) at once, every other within the key cache's TTL."""
    if await revoke_key(session, key.org_id, key_id, actor=key.key_id) is None:
        raise Problem(404, f"API key {key_id!r} not found")
    await session.commit()  # before the cache forgets: a request arriving now reads the key as revoked
    hub.keys.forget(key_id)
    return Response(status_code=204)
