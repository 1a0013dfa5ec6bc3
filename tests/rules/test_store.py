"""Versioned resources in the store: apply, no-op, tombstones, scoping and ties, audit with diff."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select

from hub.auth import ensure_org
from hub.store import Database
from hub.store.orgs import AuditEntry
from hub.store.resources import (
    apply_resource,
    current_versions,
    delete_resource,
    get_version,
    list_resources,
    list_versions,
    select_pipeline,
)
from rules.defaults import PEAK_PIPELINE
from rules.loader import load_path
from rules.validate import ResourceInvalid


def peak(name: str = "peak", branches=("*",), roles=("*",)) -> dict:
    doc = copy.deepcopy(load_path(PEAK_PIPELINE).documents[0].data)
    doc["metadata"].update(name=name, branches=list(branches), roles=list(roles))
    return doc


def rule(name: str, enabled: bool = True) -> dict:
    return {
        "apiVersion": "fulqrun.io/v1",
        "kind": "Rule",
        "metadata": {"name": name},
        "spec": {"on": "lead.created", "enabled": enabled, "do": [{"ai.score_lead": {}}]},
    }


@pytest.fixture
async def org(db: Database) -> str:
    async with db.session() as session:
        await ensure_org(session, "acme")
        await ensure_org(session, "other")
    return "acme"


async def test_apply_versions_and_noop(db: Database, org: str) -> None:
    async with db.session() as s:
        outcome, v1 = await apply_resource(s, org, peak(), "key1")
    assert (outcome, v1.version, v1.kind, v1.name) == ("created", 1, "Pipeline", "peak")
    assert v1.spec["metadata"]["org"] == "acme" and len(v1.content_hash) == 64
    async with db.session() as s:
        outcome, same = await apply_resource(s, org, peak(), "key1")
    assert (outcome, same.version) == ("unchanged", 1)
    changed = peak()
    changed["spec"]["stages"][0]["probability"] = 0.15
    async with db.session() as s:
        outcome, v2 = await apply_resource(s, org, changed, "key2")
    assert (outcome, v2.version) == ("changed", 2) and v2.content_hash != v1.content_hash
    async with db.session() as s:
        assert (await get_version(s, org, "Pipeline", "peak", 1)).spec["spec"]["stages"][0][
            "probability"
        ] == 0.1
        assert (await get_version(s, org, "Pipeline", "peak")).version == 2
        assert await get_version(s, "other", "Pipeline", "peak") is None
        audit = list(
            await s.scalars(
                select(AuditEntry).where(AuditEntry.action.like("pipeline.%")).order_by(AuditEntry.id)
            )
        )
    assert [(a.action, a.actor) for a in audit] == [
        ("pipeline.created", "key1"),
        ("pipeline.changed", "key2"),
    ]
    assert audit[1].detail["diff"] == [{"path": "spec.stages[0].probability", "old": 0.1, "new": 0.15}]


async def test_dry_run_writes_nothing(db: Database, org: str) -> None:
    async with db.session() as s:
        outcome, row = await apply_resource(s, org, rule("r1"), "k", dry_run=True)
    assert (outcome, row.version) == ("created", 1)
    async with db.session() as s:
        assert await get_version(s, org, "Rule", "r1") is None


async def test_delete_is_a_tombstone_and_reapply_creates(db: Database, org: str) -> None:
    async with db.session() as s:
        await apply_resource(s, org, rule("r1"), "k")
        tomb = await delete_resource(s, org, "Rule", "r1", "k")
        assert tomb is not None and tomb.deleted and tomb.version == 2
        assert await delete_resource(s, org, "Rule", "r1", "k") is None
        assert await current_versions(s, org, "Rule") == []
        outcome, again = await apply_resource(s, org, rule("r1"), "k")
        assert (outcome, again.version) == ("created", 3)
        versions, cursor = await list_versions(s, org, "Rule", "r1")
    assert [(v.version, v.deleted) for v in versions] == [
        (1, False),
        (2, True),
        (3, False),
    ] and cursor is None


async def test_disabled_rule_is_listed_but_not_current(db: Database, org: str) -> None:
    async with db.session() as s:
        await apply_resource(s, org, rule("on"), "k")
        await apply_resource(s, org, rule("off", enabled=False), "k")
        assert [r.name for r in await current_versions(s, org, "Rule")] == ["on"]
        page, _ = await list_resources(s, org, "Rule")
    assert [(r.name, r.enabled) for r in page] == [("off", False), ("on", True)]


async def test_list_paginates_by_name(db: Database, org: str) -> None:
    async with db.session() as s:
        for name in ("a", "b", "c", "d", "e"):
            await apply_resource(s, org, rule(name), "k")
        await apply_resource(s, "other", rule("zz"), "k")
        first, cursor = await list_resources(s, org, "Rule", limit=2)
        second, cursor2 = await list_resources(s, org, "Rule", limit=2, cursor=cursor)
        third, cursor3 = await list_resources(s, org, "Rule", limit=2, cursor=cursor2)
    assert [r.name for r in first + second + third] == ["a", "b", "c", "d", "e"]
    assert (cursor, cursor2, cursor3) == ("b", "d", None)


async def test_most_specific_pipeline_wins(db: Database, org: str) -> None:
    async with db.session() as s:
        await apply_resource(s, org, peak("peak"), "k")
        await apply_resource(s, org, peak("peak-emea", branches=["emea"]), "k")
        await apply_resource(s, org, peak("peak-managers", roles=["manager"]), "k")
        await apply_resource(s, org, peak("peak-emea-sdr", branches=["emea"], roles=["sdr"]), "k")
        picks = {
            (b, r): (await select_pipeline(s, org, b, r)).name
            for b, r in [("emea", "sdr"), ("emea", "manager"), ("us", "manager"), ("us", "ae"), (None, None)]
        }
        assert await select_pipeline(s, "other", "emea", "ae") is None
    assert picks == {
        ("emea", "sdr"): "peak-emea-sdr",
        ("emea", "manager"): "peak-emea",
        ("us", "manager"): "peak-managers",
        ("us", "ae"): "peak",
        (None, None): "peak",
    }


async def test_tie_is_refused_at_apply_time(db: Database, org: str) -> None:
    async with db.session() as s:
        await apply_resource(s, org, peak("peak-emea", branches=["emea", "apac"]), "k")
    with pytest.raises(ResourceInvalid, match="ties with pipeline 'peak-emea'"):
        async with db.session() as s:
            await apply_resource(s, org, peak("peak-apac", branches=["apac"]), "k")
    async with db.session() as s:  # disjoint branches do not tie; another org never does
        assert (await apply_resource(s, org, peak("peak-us", branches=["us"]), "k"))[0] == "created"
        assert (await apply_resource(s, "other", peak("peak-apac", branches=["apac"]), "k"))[0] == "created"
        await delete_resource(s, org, "Pipeline", "peak-emea", "k")
        assert (await apply_resource(s, org, peak("peak-apac", branches=["apac"]), "k"))[0] == "created"


async def test_org_mismatch_and_invalid_documents_are_refused(db: Database, org: str) -> None:
    foreign = rule("r")
    foreign["metadata"]["org"] = "other"
    with pytest.raises(ResourceInvalid, match="metadata.org: org 'other' is not the org"):
        async with db.session() as s:
            await apply_resource(s, org, foreign, "k")
    bad = rule("r")
    bad["spec"]["do"] = [{"nope.action": {}}]
    with pytest.raises(ResourceInvalid, match="unknown action 'nope.action'"):
        async with db.session() as s:
            await apply_resource(s, org, bad, "k")
    async with db.session() as s:
        assert await get_version(s, org, "Rule", "r") is None
