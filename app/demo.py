"""First-start bootstrap for ``fulqrun-hub run``: the demo org, its admin key and its content."""

from __future__ import annotations

import logging

from sqlalchemy import select

from activities import rule_schedules
from activities.sync_schedules import ensure_org_schedules
from connectors.catalogue import catalogue
from hub.auth import create_key, ensure_org
from hub.runtime import Hub
from hub.store.oauth import add_pending_connections
from hub.store.orgs import ApiKey
from hub.store.resources import apply_resource
from rules.defaults import default_files
from rules.loader import load_path
from rules.validate import ResourceInvalid

log = logging.getLogger("app.demo")

DEMO_ORG = "demo"


async def bootstrap(hub: Hub) -> str | None:
    """Create the demo org and an admin key on first start; returns the new key, or None if it exists.

    The default PEAK pipeline and the example rules are (re)applied every time; unchanged ones are no-ops.
    """
    async with hub.db.session() as session:
        existing = await session.scalar(select(ApiKey.id).where(ApiKey.org_id == DEMO_ORG).limit(1))
        key = None
        if not existing:
            key = await create_key(session, DEMO_ORG, "admin", name="demo admin", actor="bootstrap")
    await load_demo(hub, DEMO_ORG)
    async with hub.db.session() as session:
        await add_pending_connections(
            session, DEMO_ORG, [(p.key, p.display_name, p.auth_mode) for p in catalogue().providers.values()]
        )
    await ensure_org_schedules(hub, DEMO_ORG)
    await rule_schedules.reconcile(hub, DEMO_ORG)
    return key


async def train_models(hub: Hub) -> dict[str, str]:
    """Train (or load from cache) the demo org's AI models from the shared data; slow, so run in the background."""
    from ai.service import train_demo  # scikit-learn loads here, not at CLI start

    return await train_demo(hub, DEMO_ORG)


async def load_demo(hub: Hub, org_id: str) -> dict[str, str]:
    """Apply the default pipeline and the examples to ``org_id`` (created if missing); idempotent.

    Returns ``{"Kind/name": "created" | "changed" | "unchanged"}``. A file that does not validate is
    logged and skipped; the others are still applied.
    """
    results: dict[str, str] = {}
    for path in default_files():
        loaded = load_path(path)
        if not loaded.ok:
            log.warning("skipping %s: %s", path.name, "; ".join(str(e) for e in loaded.errors))
            continue
        applied: dict[str, str] = {}
        try:
            async with hub.db.session() as session:
                await ensure_org(session, org_id)
                for doc in loaded.documents:
                    outcome, row = await apply_resource(session, org_id, doc.data, actor="bootstrap")
                    applied[f"{row.kind}/{row.name}"] = outcome
        except ResourceInvalid as exc:
            log.warning("skipping %s: %s", path.name, exc)
            continue
        results.update(applied)
    return results
