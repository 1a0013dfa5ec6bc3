"""What a rule version would do before it runs for everyone: backtest it on the org's recorded history.

``POST /v1/rules/{name}:backtest`` — any key of the org (as the dry-run ``rules/{name}:test``): the rule's
``version`` (default: its latest) or a ``draft`` document, over ``[since, until)``, optionally against
``compare_to``; nothing runs. Evaluation happens in ``hub.bounded``'s worker processes, ``CHUNK`` recorded
items per call, each under its deadline. ``Accept: application/x-ndjson`` streams a ``{"progress": …}`` line
per chunk and the report last (``{"report": …}``, or ``{"error": problem}`` if a chunk fails); otherwise the
answer is the report as one JSON document.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from hub.bounded import evaluate
from hub.deps import ReaderKey, SessionDep
from hub.problems import Problem
from hub.store import resources as store
from hub.store.base import utcnow
from rules import limits
from rules.backtest import backtest_document, triggers
from rules.loader import load_data
from webhooks.backtest import backtest, recorded

router = APIRouter(prefix="/v1", tags=["pipelines and rules"])

MAX_VERSION = 2**31 - 1
NDJSON = "application/x-ndjson"


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
        return await evaluate(key.org_id, fn, *args)

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
