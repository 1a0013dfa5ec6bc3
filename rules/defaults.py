"""The content shipped with the hub: the default PEAK pipeline and the example rules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from rules.loader import load_path

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("rules.defaults")

HERE = Path(__file__).resolve().parent
PEAK_PIPELINE = HERE / "peak.yaml"
EXAMPLES_DIR = HERE / "examples"


def example_files() -> list[Path]:
    """The example resource files, sorted."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def default_files() -> list[Path]:
    """The default PEAK pipeline, then the examples."""
    return [PEAK_PIPELINE, *example_files()]


async def load_demo(hub: Hub, org_id: str) -> dict[str, str]:
    """Apply the default pipeline and the examples to ``org_id`` (created if missing); idempotent.

    Returns ``{"Kind/name": "created" | "changed" | "unchanged"}``. A file that does not validate is
    logged and skipped; the others are still applied.
    """
    from hub.auth import ensure_org
    from hub.store.resources import apply_resource
    from rules.validate import ResourceInvalid

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
