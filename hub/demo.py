"""First-start bootstrap for ``fulqrun-hub run``: the demo org, its admin key and its content."""

from __future__ import annotations

from sqlalchemy import select

from hub.auth import create_key
from hub.runtime import Hub
from hub.store.orgs import ApiKey

DEMO_ORG = "demo"


async def bootstrap(hub: Hub) -> str | None:
    """Create the demo org and an admin key on first start; returns the new key, or None if it exists."""
    async with hub.db.session() as session:
        existing = await session.scalar(select(ApiKey.id).where(ApiKey.org_id == DEMO_ORG).limit(1))
        if existing:
            return None
        return await create_key(session, DEMO_ORG, "admin", name="demo admin", actor="bootstrap")
