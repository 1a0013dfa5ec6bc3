"""The shipped content: the default PEAK pipeline and the examples validate and load idempotently."""

from __future__ import annotations

from app.demo import load_demo
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.store.resources import current_versions, select_pipeline
from hub.vault import Vault
from rules.defaults import default_files
from rules.loader import load_path


def test_every_shipped_file_validates() -> None:
    for path in default_files():
        loaded = load_path(path)
        assert loaded.ok, [str(e) for e in loaded.errors]
        assert loaded.documents


async def test_load_demo_is_idempotent(db: Database, settings: Settings) -> None:
    hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
    first = await load_demo(hub, "demo")
    assert first["Pipeline/peak"] == "created" and first["Rule/big-deal-to-acquire"] == "created"
    assert set(first.values()) == {"created"}
    second = await load_demo(hub, "demo")
    assert set(second) == set(first) and set(second.values()) == {"unchanged"}
    async with db.session() as s:
        assert (await select_pipeline(s, "demo", "emea", "ae")).name == "peak-emea"
        assert (await select_pipeline(s, "demo", "us", "ae")).name == "peak"
        rules = await current_versions(s, "demo", "Rule")
    assert "weekly-pipeline-review" not in {r.name for r in rules}  # shipped disabled
    assert len(rules) == 9  # with date-rules.yaml
