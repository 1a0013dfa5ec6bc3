"""First-start bootstrap for ``fulqrun-hub run``: the demo org, its admin key and its content."""

from __future__ import annotations

import asyncio
import logging

import httpx
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


#: The demo's deals: (id, name, amount, stages to move through after prospect). Stark ends in keep.
DEMO_OPPORTUNITIES = [
    ("demo-initech", "Initech pilot", 18000.0, []),
    ("demo-globex", "Globex expansion", 42000.0, ["engage"]),
    ("demo-umbrella", "Umbrella renewal", 85000.0, ["engage", "acquire"]),
    ("demo-stark", "Stark Industries rollout", 240000.0, ["engage", "acquire", "keep"]),
]
_MEDDPICC = {"metrics": 3, "economic_buyer": 2, "decision_criteria": 2, "decision_process": 2, "identify_pain": 3,
             "champion": 3, "competition": 1, "paper_process": 3}  # fmt: skip


async def seed_opportunities(http: httpx.AsyncClient, key: str, attempts: int = 20) -> dict[str, str]:
    """Register the demo deals through the HTTP API, as a CRM would, and move each through PEAK to its stage
    (checklist and documents of every stage left first done); their rules run on the way. Returns
    ``{id: stage}``. ``http`` is a client of the running API."""
    auth = {"Authorization": f"Bearer {key}"}
    reached: dict[str, str] = {}
    for oid, name, amount, path in DEMO_OPPORTUNITIES:
        body = {"name": name, "amount": amount, "currency": "USD", "owner_role": "ae", "meddpicc": _MEDDPICC,
                "account": {"name": name.split()[0]}, "primary_contact": {"email": f"buyer@{oid}.example"}}  # fmt: skip
        view = (await http.put(f"/v1/opportunities/{oid}", json=body, headers=auth)).raise_for_status().json()
        for target in path:
            here = next(s for s in view["stages"] if s["stage"] == view["stage"])
            if here["checklist"]:
                items = dict.fromkeys(here["checklist"], True)
                r = await http.post(f"/v1/opportunities/{oid}/checklist", json={"items": items}, headers=auth)
                r.raise_for_status()
            if here["documents"]:
                docs = dict.fromkeys(here["documents"], True)
                r = await http.post(f"/v1/opportunities/{oid}/documents", json={"documents": docs}, headers=auth)
                r.raise_for_status()
            move = {"to": target, "actor": {"id": "demo-ae", "role": "ae"}}
            for _ in range(attempts):  # document marks arrive as events: wait until the workflow has them
                r = await http.post(f"/v1/opportunities/{oid}/transitions", json=move, headers=auth)
                if r.status_code != 409:
                    break
                await asyncio.sleep(0.25)
            view = r.raise_for_status().json()
        reached[oid] = view["stage"]
    return reached
