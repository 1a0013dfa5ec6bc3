"""What a rule version would do before it runs for everyone: backtest it on the org's recorded history, then
roll it out to a share of opportunities and promote it (or roll it back).

``POST /v1/rules/{name}:backtest`` — any key of the org (as the dry-run ``rules/{name}:test``): the rule's
``version`` (default: its latest) or a ``draft`` document, over ``[since, until)``, optionally against
``compare_to``; nothing runs. Evaluation happens in ``hub.bounded``'s worker processes, ``CHUNK`` recorded
items per call, each under its deadline and charged to the org's evaluation CPU budget (a spent budget makes the
backtest wait, not fail). ``Accept: application/x-ndjson`` streams a ``{"progress": …}`` line
per chunk and the report last (``{"report": …}``, or ``{"error": problem}`` if a chunk fails); otherwise the
answer is the report as one JSON document.

Staged rollout (admin): ``POST /v1/rules/{name}:rollout {"version", "percent", "branches", "stable"?}`` runs
``version`` for ``percent`` % of opportunities (a stable hash of the opportunity id, ``hub.flags.rule_version``)
and for opportunities of the named branches, the stable version for the others; ``GET …/rollout`` shows it;
``:promote`` makes the candidate the rule's version for everyone, ``:rollback`` the stable one (each re-applied as
the newest version when it is not already), and ends the rollout. Each change is in the audit log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from activities import rule_schedules
from hub.bounded import evaluate
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep
from hub.problems import Problem
from hub.store import resources as store
from hub.store.base import utcnow
from hub.store.orgs import record_audit
from hub.store.rollouts import RuleRollout, end_rollout, get_rollout
from rules import limits
from rules.backtest import backtest_document, triggers
from rules.loader import load_data
from rules.model import ScopeItem
from webhooks.backtest import backtest, recorded

router = APIRouter(prefix="/v1", tags=["pipelines and rules"])

MAX_VERSION = 2**31 - 1
NDJSON = "application/x-ndjson"
BUSY_RETRY_SECONDS = 0.2  # another evaluation of the org in flight: try again this soon


class BacktestRequest(BaseModel):
    """A backtest: which version (or a draft), the window, and optionally another version to compare with."""

    version: int | None = Field(default=None, ge=1, le=MAX_VERSION, description="a stored version; default latest")
    draft: dict[str, Any] | None = Field(default=None, description="a Rule document to test instead of a version")
    since: datetime = Field(description="start of the window (inclusive); a time without zone is UTC")
    until: datetime | None = Field(default=None, description="end of the window (exclusive); default now")
    compare_to: int | None = Field(default=None, ge=1, le=MAX_VERSION, description="a stored version to diff with")
    limit: int = Field(default=100, ge=1, le=1000, description="at most this many firings and ids per list")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


async def _stored_document(session: SessionDep, org_id: str, name: str, version: int | None, field: str) -> dict:
    row = await store.get_version(session, org_id, "Rule", name, version)
    if row is None or row.deleted:
        what = f"rule {name!r}" + (f" version {version}" if version is not None else "")
        raise Problem(404, f"{what} not found" + (f" ({field})" if version is not None else ""))
    return backtest_document(row.spec, row.version)


async def _draft_document(org_id: str, draft: dict[str, Any]) -> dict:
    limits.check(draft, "draft")
    loaded = await evaluate(org_id, load_data, draft, "draft")
    if loaded.errors:
        errors = [e.as_dict() for e in loaded.errors]
        first = errors[0]
        raise Problem(422, f"invalid draft: {first.get('field') or 'document'}: {first.get('message')}",
                      title="Invalid resource", errors=errors)  # fmt: skip
    if draft.get("kind") != "Rule":
        raise Problem(422, f"draft.kind must be 'Rule', got {draft.get('kind')!r}")
    return backtest_document(draft, 0)


@router.post("/rules/{name}:backtest", summary="Backtest a rule version (or a draft) on recorded history")
async def backtest_rule(
    name: str, body: BacktestRequest, request: Request, session: SessionDep, key: ReaderKey
) -> Any:
    """How often the rule would have fired in the window, on which opportunities, with which rendered actions,
    and (``compare_to``) how that differs from another version; nothing is run or stored."""
    since, until = _utc(body.since), _utc(body.until or utcnow())
    if since >= until:
        raise Problem(422, "since must be before until")
    if body.draft is not None and body.version is not None:
        raise Problem(422, "give either version or draft, not both")
    if body.draft is not None:
        rule = await _draft_document(key.org_id, body.draft)
    else:
        rule = await _stored_document(session, key.org_id, name, body.version, "version")
    compare = None
    if body.compare_to is not None:
        compare = await _stored_document(session, key.org_id, name, body.compare_to, "compare_to")
    history = await recorded(session, key.org_id, since, until, triggers(rule, compare))
    async def run(fn: Any, *args: Any) -> Any:
        """One chunk in the evaluation pool; while the org's CPU budget is spent or another of its evaluations
        runs, wait (``Retry-After``) instead of failing: a long backtest goes at the org's evaluation budget."""
        while True:
            try:
                return await evaluate(key.org_id, fn, *args)
            except Problem as exc:
                if exc.status != 429:
                    raise
                await asyncio.sleep(float((exc.headers or {}).get("Retry-After", BUSY_RETRY_SECONDS)))

    steps = backtest(history, name, rule, compare, run, body.limit)
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_lines(steps), media_type=NDJSON)
    async for step in steps:
        if "report" in step:
            return JSONResponse(step["report"])
    raise AssertionError("a backtest always ends with its report")


async def _lines(steps: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """One JSON line per step; a problem after the answer has begun becomes an ``{"error": …}`` line."""
    try:
        async for step in steps:
            yield json.dumps(step, separators=(",", ":"), default=str).encode() + b"\n"
    except Problem as exc:
        yield json.dumps({"error": {"status": exc.status, "detail": exc.detail}}).encode() + b"\n"


class RolloutRequest(BaseModel):
    """Run ``version`` for ``percent`` % of opportunities and the named branches, ``stable`` for the rest."""

    version: int = Field(ge=1, le=MAX_VERSION, description="the candidate version")
    percent: float = Field(ge=0.0, le=100.0, description="share of opportunities (stable hash of their id)")
    branches: list[ScopeItem] = Field(default_factory=list, max_length=100, description="branches that get it all")
    stable: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                               description="default: the rollout's, else the newest version before `version`")


class RolloutPublic(BaseModel):
    """A rule's staged rollout."""

    rule: str
    stable_version: int
    candidate_version: int
    percent: float
    branches: list[str]
    updated_by: str
    updated_at: datetime


class ReleaseResult(BaseModel):
    """What promote or rollback did: the version that now runs for everyone (``outcome`` ``unchanged`` when it
    already was the newest version, ``changed`` when its content was applied again as a new version)."""

    outcome: str
    version: int
    released: int = Field(description="the rollout's version that now runs for everyone")


def _rollout_public(row: RuleRollout) -> RolloutPublic:
    return RolloutPublic(rule=row.rule, stable_version=row.stable_version, candidate_version=row.candidate_version,
                         percent=row.percent, branches=list(row.branches), updated_by=row.updated_by,
                         updated_at=row.updated_at)  # fmt: skip


async def _live_version(session: SessionDep, org_id: str, name: str, version: int, field: str) -> int:
    row = await store.get_version(session, org_id, "Rule", name, version)
    if row is None or row.deleted:
        raise Problem(404, f"rule {name!r} version {version} not found ({field})")
    return row.version


async def _previous_version(session: SessionDep, org_id: str, name: str, version: int) -> int:
    rows, _ = await store.list_versions(session, org_id, "Rule", name, limit=1000)
    older = [r.version for r in rows if r.version < version and not r.deleted]
    if not older:
        raise Problem(422, f"rule {name!r} has no version before {version} to keep as stable; give stable")
    return older[-1]


@router.get("/rules/{name}/rollout", summary="A rule's staged rollout")
async def get_rule_rollout(name: str, session: SessionDep, key: ReaderKey) -> RolloutPublic:
    """The rollout, or 404 when the rule runs its newest version for everyone."""
    row = await get_rollout(session, key.org_id, name)
    if row is None:
        raise Problem(404, f"rule {name!r} has no rollout")
    return _rollout_public(row)


@router.post("/rules/{name}:rollout", summary="Roll a rule version out to a share of opportunities or branches")
async def rollout_rule(name: str, body: RolloutRequest, session: SessionDep, key: AdminKey) -> RolloutPublic:
    """Start or change the rule's staged rollout (audited)."""
    candidate = await _live_version(session, key.org_id, name, body.version, "version")
    row = await get_rollout(session, key.org_id, name)
    if body.stable is not None:
        stable = await _live_version(session, key.org_id, name, body.stable, "stable")
    elif row is not None:
        stable = row.stable_version
    else:
        stable = await _previous_version(session, key.org_id, name, candidate)
    if stable == candidate:
        raise Problem(422, f"stable and candidate are both version {stable}")
    action = "rule.rollout_changed" if row is not None else "rule.rollout_started"
    if row is None:
        row = RuleRollout(org_id=key.org_id, rule=name)
        session.add(row)
    row.stable_version, row.candidate_version, row.percent = stable, candidate, body.percent
    row.branches, row.updated_by, row.updated_at = list(body.branches), f"key:{key.key_id}", utcnow()
    await record_audit(session, key.org_id, f"key:{key.key_id}", action, f"rule/{name}", row.targeting())
    await session.flush()
    return _rollout_public(row)


async def _release(name: str, promote: bool, session: SessionDep, hub: HubDep, key: AdminKey) -> ReleaseResult:
    rollout = await get_rollout(session, key.org_id, name)
    if rollout is None:
        raise Problem(404, f"rule {name!r} has no rollout")
    released = rollout.candidate_version if promote else rollout.stable_version
    row = await store.get_version(session, key.org_id, "Rule", name, released)
    if row is None or row.deleted:
        raise Problem(409, f"rule {name!r} version {released} no longer exists")
    outcome, current = await store.apply_resource(session, key.org_id, row.spec, actor=f"key:{key.key_id}")
    await end_rollout(session, key.org_id, name)
    action = "rule.promoted" if promote else "rule.rolled_back"
    await record_audit(session, key.org_id, f"key:{key.key_id}", action, f"rule/{name}",
                       {**rollout.targeting(), "released": released, "version": current.version})  # fmt: skip
    if outcome != "unchanged":
        await rule_schedules.rule_changed(hub, key.org_id, name, current)
    return ReleaseResult(outcome=outcome, version=current.version, released=released)


@router.post("/rules/{name}:promote", summary="End a rollout: its candidate version runs for everyone")
async def promote_rule(name: str, session: SessionDep, hub: HubDep, key: AdminKey) -> ReleaseResult:
    """The candidate becomes the rule's version for every opportunity (audited)."""
    return await _release(name, True, session, hub, key)


@router.post("/rules/{name}:rollback", summary="End a rollout: its stable version runs for everyone")
async def rollback_rule(name: str, session: SessionDep, hub: HubDep, key: AdminKey) -> ReleaseResult:
    """The stable version becomes the rule's version for every opportunity again (audited)."""
    return await _release(name, False, session, hub, key)
