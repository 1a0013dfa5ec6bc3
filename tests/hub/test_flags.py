"""Per-org feature flags through OpenFeature."""

from __future__ import annotations

from hub.auth import ensure_org
from hub.flags import flag_enabled
from hub.store import Database


async def test_flags_come_from_the_org_with_documented_defaults(db: Database) -> None:
    async with db.session() as s:
        org = await ensure_org(s, "acme")
        assert await flag_enabled(s, "acme", "openai") is False
        assert await flag_enabled(s, "acme", "ai.insights") is True
        org.flags = {"openai": True, "ai.insights": False}
    async with db.session() as s:
        assert await flag_enabled(s, "acme", "openai") is True
        assert await flag_enabled(s, "acme", "ai.insights") is False
        assert await flag_enabled(s, "globex", "openai") is False
