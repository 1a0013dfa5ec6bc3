"""The opportunity projection tables: newer revisions win, rule runs are stored once, pipeline metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.store import Database
from hub.store.opportunities import (
    RunFilter,
    get_projection,
    get_rule_run,
    list_rule_runs,
    pipeline_metrics,
    record_rule_runs,
    save_rule_run,
    write_projection,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def row(opp: str, stage: str, revision: int) -> dict:
    return {"org_id": "acme", "id": opp, "workflow_id": f"opportunity/acme/{opp}", "pipeline_name": "peak",
            "pipeline_version": 1, "stage": stage, "body_hash": "h", "revision": revision, "state": {"r": revision},
            "created_at": T0, "updated_at": T0}  # fmt: skip


def visits(*stays: tuple[str, int, int | None]) -> list[dict]:
    return [{"idx": i, "pipeline_name": "peak", "stage": s, "entered_at": T0 + timedelta(hours=a),
             "exited_at": None if b is None else T0 + timedelta(hours=b)} for i, (s, a, b) in enumerate(stays)]


async def test_projection_keeps_the_newest_revision(db: Database) -> None:
    async with db.session() as s:
        assert await db.write(write_projection, row("o1", "prospect", 2), visits(("prospect", 0, None)))
    async with db.session() as s:
        assert not await db.write(write_projection, row("o1", "engage", 1), visits(("engage", 0, None)))  # older: ignored
        assert not await db.write(write_projection, row("o1", "engage", 2), [])  # same revision: ignored
    async with db.session() as s:
        stored = await get_projection(s, "acme", "o1")
        assert (stored.stage, stored.revision, stored.state) == ("prospect", 2, {"r": 2})
        assert await db.write(write_projection, row("o1", "engage", 3), visits(("prospect", 0, 5), ("engage", 5, None)))
    async with db.session() as s:
        assert (await get_projection(s, "acme", "o1")).stage == "engage"


async def test_rule_runs_are_recorded_once_per_key(db: Database) -> None:
    run = {"org_id": "acme", "key": "wf/1/0.stage.entered/r", "subject": "wf", "trigger": "stage.entered",
           "rule": "r", "version": 1, "fired": True, "reason": "no condition", "actions": [], "at": T0}
    async with db.session() as s:
        assert await record_rule_runs(s, [run, {**run, "key": "wf/1/0.stage.entered/q", "rule": "q"}]) == 2
    async with db.session() as s:
        assert await record_rule_runs(s, [run]) == 0  # a retried activity inserts nothing


async def test_a_run_going_on_after_a_wait_is_saved_over_its_record(db: Database) -> None:
    wait = {"name": "wait", "idempotency_key": "k/1", "ok": False, "status": "waiting", "output": {"until": "x"}}
    run = {"org_id": "acme", "key": "wf/1/0.stage.entered/w", "subject": "wf/1", "trigger": "stage.entered",
           "rule": "w", "version": 1, "fired": True, "reason": "r", "at": T0,
           "actions": [{"name": "http.post", "idempotency_key": "k/0", "ok": True, "status": "ok"}, wait]}  # fmt: skip
    async with db.session() as s:
        await record_rule_runs(s, [run])
    async with db.session() as s:
        [stored] = await list_rule_runs(s, "acme", RunFilter(status="waiting"), 10)
    skipped = {"name": "http.post", "idempotency_key": "k/2", "ok": False, "status": "skipped", "reason": "unless"}
    async with db.session() as s:  # the wait ended, its unless held: the rest skipped, the run ok
        await save_rule_run(s, {**run, "reason": "r; ended", "actions": [run["actions"][0],
                                {**wait, "ok": True, "status": "ok"}, skipped]})  # fmt: skip
    async with db.session() as s:
        again = await get_rule_run(s, "acme", stored.id)
        assert again is not None and (again.status, again.reason, len(again.actions)) == ("ok", "r; ended", 3)
        await save_rule_run(s, {**run, "actions": [{**wait, "status": "cancelled"}]})
    async with db.session() as s:
        assert [r.status for r in await list_rule_runs(s, "acme", RunFilter(), 10)] == ["cancelled"]


async def test_pipeline_metrics_counts_conversion_and_median_time(db: Database) -> None:
    async with db.session() as s:
        await db.write(write_projection, row("a", "engage", 1), visits(("prospect", 0, 2), ("engage", 2, None)))
        await db.write(write_projection, row("b", "prospect", 1), visits(("prospect", 0, None)))
        await db.write(write_projection, row("c", "acquire", 1),
                                visits(("prospect", 0, 4), ("engage", 4, 10), ("acquire", 10, None)))
    async with db.session() as s:
        m = await pipeline_metrics(s, "acme", "peak", ["prospect", "engage", "acquire", "keep"])
    by = {x["stage"]: x for x in m["stages"]}
    assert m["total"] == 3
    assert [by[k]["opportunities"] for k in ("prospect", "engage", "acquire", "keep")] == [1, 1, 1, 0]
    assert by["prospect"]["conversion"] == 2 / 3 and by["engage"]["conversion"] == 1 / 2
    assert by["acquire"]["conversion"] == 0.0 and by["keep"]["conversion"] is None
    assert by["prospect"]["median_seconds_in_stage"] == 3 * 3600  # finished stays of 2h and 4h
    assert by["engage"]["median_seconds_in_stage"] == 6 * 3600
