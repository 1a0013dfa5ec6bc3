"""``/v1/opportunities``: register opportunities, move them through their pipeline, read their state.

Every write goes to the opportunity's workflow (Update or signal); reads come from a workflow query,
or from the projection table when no worker answers. Pipeline metrics and bulk migration live here
too (``/v1/pipelines/{name}/metrics``, ``/v1/pipelines/{name}/opportunities:migrate``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.connector_types import org_priority
from activities.opportunity_types import (
    Actor,
    ChecklistRequest,
    CloseRequest,
    DomainEvent,
    DomainSource,
    MigrateRequest,
    OpportunityInput,
    OpportunityState,
    OpportunitySummary,
    OpportunityView,
    PinnedPipeline,
    TransitionCheck,
    TransitionRequest,
    UpsertRequest,
    body_hash,
    build_view,
    stages_of,
    workflow_id,
)
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep, TemporalDep, WriterKey
from hub.problems import Problem
from hub.store.base import utcnow
from hub.store.opportunities import (
    OpportunityFilter,
    OpportunityRecord,
    get_projection,
    list_for_pipeline,
    list_opportunities,
    pipeline_metrics,
)
from hub.store.orgs import record_audit
from hub.store.resources import ResourceVersion, get_version, select_pipeline
from routes.paging import utc
from rules import limits
from rules.pipeline import compile_pipeline
from workflows.opportunity import INVALID, MIGRATION_REFUSED, REFUSED, UNCHANGED, OpportunityWorkflow

router = APIRouter(tags=["opportunities"])

UPDATE_TIMEOUT = timedelta(seconds=15)
QUERY_TIMEOUT = timedelta(seconds=3)
BULK_CONCURRENCY = 8


class OpportunityIn(BaseModel):
    """An opportunity as the CRM sends it; fields beyond these are kept and visible to rules."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=500)
    org: str | None = Field(default=None, description="must be the API key's org when given")
    branch: str = Field(default="*", max_length=64)
    owner_role: str = Field(default="*", max_length=64)
    amount: float = Field(default=0.0, ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    stage: str | None = Field(default=None, description="initial stage (new opportunities only)")
    meddpicc: dict[str, float] = Field(default_factory=dict)
    close_date: date | datetime | None = Field(
        default=None, description="an ISO date (00:00 UTC that day) or date-time; opportunity.close_date_approaching "
        "counts back from it")
    account: dict[str, Any] = Field(default_factory=dict)
    contacts: list[dict[str, Any]] = Field(default_factory=list)
    primary_contact: dict[str, Any] | None = None


class TransitionIn(BaseModel):
    """Move to another stage."""

    to: str = Field(min_length=1, max_length=100)
    actor: Actor
    reason: str | None = Field(default=None, max_length=500, description="why, kept in the history")


class ChecklistIn(BaseModel):
    """Checklist items to mark done (true) or undone (false)."""

    items: dict[str, bool] = Field(min_length=1)
    actor: Actor | None = None


class DocumentsIn(BaseModel):
    """Documents to mark present (true) or absent (false)."""

    documents: dict[str, bool] = Field(min_length=1)


class MigrationOutcome(BaseModel):
    """What a pipeline migration did to one opportunity."""

    id: str
    status: str  # migrated | unchanged | refused | error
    version: int | None = None
    unmet: list[dict] = Field(default_factory=list)
    detail: str | None = None


def _pinned(row: ResourceVersion) -> PinnedPipeline:
    return PinnedPipeline(name=row.name, version=row.version, content_hash=row.content_hash, spec=row.spec)


def _handle(client: Client, org_id: str, opportunity_id: str):  # noqa: ANN202 - typed workflow handle
    return client.get_workflow_handle_for(OpportunityWorkflow.run, workflow_id(org_id, opportunity_id))


def _view(state: OpportunityState, source: str = "workflow") -> OpportunityView:
    return build_view(state, utcnow(), source)


#: Pinned pipeline versions never change: their specs by (org, name, version, content hash), for the views of
#: Updates' answers, which leave the spec out (``OpportunityWorkflow._answer``); the oldest goes past SPECS_KEPT.
_SPECS: dict[tuple[str, str, int, str], dict] = {}
SPECS_KEPT = 512


async def _answer_view(hub, client: Client, state: OpportunityState) -> OpportunityView:  # noqa: ANN001
    """The view of an Update's answer, its pipeline's spec put back: from this process's cache, else the pinned
    version's row, else (the row gone or changed, as after a restore elsewhere) the workflow's own state."""
    pinned = state.pipeline
    key = (state.org_id, pinned.name, pinned.version, pinned.content_hash)
    if not pinned.spec:  # (else a worker from before answers left it out)
        if key not in _SPECS:
            async with hub.db.session() as session:
                row = await get_version(session, state.org_id, "Pipeline", pinned.name, pinned.version)
            if row is not None and row.content_hash == pinned.content_hash:
                _SPECS[key] = row.spec
            else:
                whole = await _handle(client, state.org_id, state.opportunity_id).query(
                    OpportunityWorkflow.state, rpc_timeout=QUERY_TIMEOUT)
                _SPECS[key] = whole.pipeline.spec
            if len(_SPECS) > SPECS_KEPT:
                del _SPECS[next(iter(_SPECS))]
        pinned.spec = _SPECS[key]
    return _view(state)


def _workflow_error(exc: BaseException, opportunity_id: str) -> ApplicationError:
    """The workflow's own error behind a client error; 404/503 problems for a missing or silent workflow."""
    if isinstance(exc, WorkflowUpdateFailedError) and isinstance(exc.cause, ApplicationError):
        return exc.cause
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        raise Problem(404, f"opportunity {opportunity_id!r} not found") from None
    if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise Problem(503, "the opportunity's worker did not answer in time; retry", title="Worker unavailable") from None
    raise exc


def _unmet(error: ApplicationError) -> list[dict]:
    return list(error.details[0]) if error.details else []


async def _update(handle, update, arg, opportunity_id: str, update_id: str | None = None) -> OpportunityState:  # noqa: ANN001
    """Run an Update; refusals become 409/422 problems listing every unmet requirement."""
    try:
        return await handle.execute_update(update, arg, id=update_id, rpc_timeout=UPDATE_TIMEOUT)
    except (WorkflowUpdateFailedError, RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        error = _workflow_error(exc, opportunity_id)
        if error.type in (REFUSED, MIGRATION_REFUSED):
            raise Problem(409, error.message, title="Refused", unmet=_unmet(error)) from None
        if error.type == INVALID:
            raise Problem(422, error.message, unmet=_unmet(error)) from None
        raise


async def _state(client: Client, hub, org_id: str, opportunity_id: str) -> OpportunityView:  # noqa: ANN001
    """The opportunity from its workflow, else from the projection; 404 if neither knows it."""
    try:
        state = await _handle(client, org_id, opportunity_id).query(
            OpportunityWorkflow.state, rpc_timeout=QUERY_TIMEOUT
        )
        return _view(state)
    except (RPCError, WorkflowQueryFailedError):
        pass
    async with hub.db.session() as session:
        row = await get_projection(session, org_id, opportunity_id)
    if row is None:
        raise Problem(404, f"opportunity {opportunity_id!r} not found")
    return _view(OpportunityState.model_validate(row.state), "projection")


@router.put("/v1/opportunities/{opportunity_id}")
async def put_opportunity(
    opportunity_id: str, body: OpportunityIn, hub: HubDep, client: TemporalDep, key: WriterKey
) -> OpportunityView:
    """Register an opportunity (starts its workflow, pinned to the most specific pipeline) or update it.

    The same body again changes nothing; a changed body updates the fields and fires
    ``opportunity.updated`` rules. One Update-with-Start: a new workflow answers it with its first state.
    """
    if body.org is not None and body.org != key.org_id:
        raise Problem(422, "org must be the API key's org (or omitted)")
    opp = body.model_dump(mode="json", exclude_none=True, exclude={"org"})
    limits.check(opp, "opp")  # conditions are bounded on inputs within these limits
    async with hub.db.session() as session:  # not held while waiting for the workflow
        row = await select_pipeline(session, key.org_id, body.branch, body.owner_role)
    if row is None:
        raise Problem(
            409, f"no pipeline applies to branch {body.branch!r} and role {body.owner_role!r}; apply one first"
        )
    pinned = _pinned(row)
    if body.stage is not None and compile_pipeline(pinned.spec).stage(body.stage) is None:
        raise Problem(422, f"stage {body.stage!r} does not exist in pipeline {pinned.name!r} v{pinned.version}")
    digest, registration = body_hash(opp), uuid.uuid4().hex
    start = WithStartWorkflowOperation(
        OpportunityWorkflow.run,
        OpportunityInput(
            org_id=key.org_id, opportunity_id=opportunity_id, opp=opp, body_hash=digest, pipeline=pinned,
            registration=registration,
        ),
        id=workflow_id(key.org_id, opportunity_id),
        task_queue=hub.settings.task_queue,
        priority=org_priority(key.org_id),  # orgs in turn on the shared queue: one org's import holds up no other
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    try:
        state = await client.execute_update_with_start_workflow(
            OpportunityWorkflow.upsert,
            UpsertRequest(opp=opp, body_hash=digest, registration=registration),
            start_workflow_operation=start,
            rpc_timeout=UPDATE_TIMEOUT,
        )
    except (WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        if _workflow_error(exc, opportunity_id).type != UNCHANGED:
            raise
        return await _state(client, hub, key.org_id, opportunity_id)
    return await _answer_view(hub, client, state)


class OpportunityPage(BaseModel):
    """Opportunities by id; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[OpportunitySummary]
    next_cursor: str | None


class CloseIn(BaseModel):
    """Close lost with a reason."""

    reason: str = Field(min_length=1, max_length=2000)
    actor: Actor


def _summary(row: OpportunityRecord) -> OpportunitySummary:
    opp = (row.state or {}).get("opp") or {}
    return OpportunitySummary(
        id=row.id, name=opp.get("name"), stage=row.stage, pipeline=row.pipeline_name,
        pipeline_version=row.pipeline_version, branch=row.branch, owner=row.owner, amount=opp.get("amount"),
        close_date=opp.get("close_date"), closed=(row.state or {}).get("closed"), archived=row.archived,
        updated_at=utc(row.updated_at),
    )  # fmt: skip


@router.get("/v1/opportunities")
async def list_opportunities_route(
    session: SessionDep,
    key: ReaderKey,
    stage: str | None = None,
    pipeline: str | None = None,
    branch: str | None = None,
    owner: Annotated[str | None, Query(description="the owner's id (opp.owner.id, opp.owner or opp.owner_id)")]
    = None,
    archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> OpportunityPage:
    """The org's opportunities (as last projected), filtered by stage, pipeline, branch and owner; archived ones
    only with ``archived=true``."""
    after = None
    if cursor is not None:
        try:
            after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (ValueError, binascii.Error):
            raise Problem(400, "invalid cursor", field="cursor") from None
    where = OpportunityFilter(stage=stage, pipeline=pipeline, branch=branch, owner=owner, archived=archived)
    rows = await list_opportunities(session, key.org_id, where, limit + 1, after)
    page = rows[:limit]
    next_cursor = base64.urlsafe_b64encode(page[-1].id.encode()).decode().rstrip("=") if len(rows) > limit else None
    return OpportunityPage(items=[_summary(r) for r in page], next_cursor=next_cursor)


@router.get("/v1/opportunities/{opportunity_id}/transitions/{to}:check")
async def check_transition(
    opportunity_id: str,
    to: str,
    client: TemporalDep,
    key: ReaderKey,
    actor_id: Annotated[str, Query(description="who would move it")] = "check",
    role: Annotated[str, Query(description="their sales role")] = "ae",
) -> TransitionCheck:
    """What still blocks a move to ``to`` by an actor of ``role`` (every unmet requirement); nothing changes."""
    try:
        unmet = await _handle(client, key.org_id, opportunity_id).query(
            OpportunityWorkflow.check_transition, TransitionRequest(to=to, actor=Actor(id=actor_id, role=role)),
            rpc_timeout=QUERY_TIMEOUT,
        )
    except RPCError as exc:
        _workflow_error(exc, opportunity_id)
        raise
    except WorkflowQueryFailedError as exc:
        raise Problem(503, f"the opportunity's worker could not answer: {exc}", title="Worker unavailable") from None
    return TransitionCheck(to=to, allowed=not unmet, unmet=[u.model_dump() for u in unmet])


async def _close(hub, client: Client, org_id: str, opportunity_id: str, req: CloseRequest) -> OpportunityView:  # noqa: ANN001
    state = await _update(_handle(client, org_id, opportunity_id), OpportunityWorkflow.close, req, opportunity_id)
    return await _answer_view(hub, client, state)


@router.post("/v1/opportunities/{opportunity_id}:close-lost")
async def close_lost(
    opportunity_id: str, body: CloseIn, hub: HubDep, client: TemporalDep, key: WriterKey
) -> OpportunityView:
    """Close the opportunity lost with a reason; no transition is accepted afterwards (422 if already closed)."""
    return await _close(hub, client, key.org_id, opportunity_id,
                        CloseRequest(outcome="lost", reason=body.reason, actor=body.actor))


@router.post("/v1/opportunities/{opportunity_id}:archive")
async def archive(opportunity_id: str, hub: HubDep, client: TemporalDep, key: WriterKey) -> OpportunityView:
    """Archive the opportunity: kept, readable, out of ``GET /v1/opportunities`` unless ``archived=true``."""
    return await _close(hub, client, key.org_id, opportunity_id,
                        CloseRequest(actor=Actor(id=f"key:{key.key_id}", role="api"), archive=True))


@router.get("/v1/opportunities/{opportunity_id}")
async def get_opportunity(opportunity_id: str, hub: HubDep, client: TemporalDep, key: ReaderKey) -> OpportunityView:
    """Stage, pinned pipeline, history, checklist/documents and metrics per stage, AI insight, rule runs."""
    return await _state(client, hub, key.org_id, opportunity_id)


@router.post("/v1/opportunities/{opportunity_id}/transitions")
async def transition(
    opportunity_id: str,
    body: TransitionIn,
    hub: HubDep,
    client: TemporalDep,
    key: WriterKey,
    idempotency_key: str | None = Header(default=None),
) -> OpportunityView:
    """Move to another stage: 200 with the new state, or 409 listing every unmet requirement (a refusal leaves no
    history in the workflow: it is kept in the audit log, ``opportunity.transition_refused``)."""
    update_id = f"transition/{idempotency_key}" if idempotency_key else None
    try:
        state = await _update(
            _handle(client, key.org_id, opportunity_id),
            OpportunityWorkflow.transition,
            TransitionRequest(to=body.to, actor=body.actor, reason=body.reason),
            opportunity_id,
            update_id,
        )
    except Problem as problem:
        if problem.status == 409:
            async with hub.db.session() as session:
                await record_audit(session, key.org_id, key.key_id, "opportunity.transition_refused",
                                   f"opportunity/{opportunity_id}",
                                   {"to": body.to, "person": body.actor.model_dump(), "reason": body.reason,
                                    "detail": problem.detail, "unmet": problem.extra.get("unmet", [])})  # fmt: skip
        raise
    return await _answer_view(hub, client, state)


@router.post("/v1/opportunities/{opportunity_id}/checklist")
async def checklist(
    opportunity_id: str, body: ChecklistIn, hub: HubDep, client: TemporalDep, key: WriterKey
) -> OpportunityView:
    """Mark checklist items done or undone (422 naming unknown items)."""
    state = await _update(
        _handle(client, key.org_id, opportunity_id),
        OpportunityWorkflow.set_checklist,
        ChecklistRequest(items=body.items, actor=body.actor),
        opportunity_id,
    )
    return await _answer_view(hub, client, state)


@router.post("/v1/opportunities/{opportunity_id}/documents", status_code=202)
async def documents(
    opportunity_id: str,
    body: DocumentsIn,
    hub: HubDep,
    client: TemporalDep,
    key: WriterKey,
    idempotency_key: str | None = Header(default=None),
) -> dict:
    """Mark required documents present or absent (``document.changed`` events; applied asynchronously)."""
    view = await _state(client, hub, key.org_id, opportunity_id)
    known = {d for s in view.stages for d in s.documents}
    unknown = sorted(set(body.documents) - known)
    if unknown:
        raise Problem(422, f"documents not required by this pipeline: {', '.join(unknown)}", unknown=unknown)
    handle = _handle(client, key.org_id, opportunity_id)
    batch = idempotency_key or uuid.uuid4().hex
    for name, present in sorted(body.documents.items()):
        await handle.signal(
            OpportunityWorkflow.domain_event,
            DomainEvent(
                type="document.changed",
                data={"document": name, "present": present},
                source=DomainSource(provider="api", event_id=f"{batch}/{name}"),
            ),
        )
    return {"accepted": sorted(body.documents)}


async def _migrate_one(client: Client, hub, org_id: str, opportunity_id: str, name: str) -> MigrationOutcome:  # noqa: ANN001
    async with hub.db.session() as session:
        newest = await get_version(session, org_id, "Pipeline", name)
    if newest is None or newest.deleted:
        raise Problem(409, f"pipeline {name!r} no longer exists; nothing to migrate to")
    try:
        state = await _update(
            _handle(client, org_id, opportunity_id),
            OpportunityWorkflow.migrate_pipeline,
            MigrateRequest(pipeline=_pinned(newest)),
            opportunity_id,
        )
    except WorkflowUpdateFailedError as exc:
        if isinstance(exc.cause, ApplicationError) and exc.cause.type == UNCHANGED:
            return MigrationOutcome(id=opportunity_id, status="unchanged", version=newest.version)
        raise
    except Problem as problem:
        if problem.status != 409:
            raise
        return MigrationOutcome(
            id=opportunity_id, status="refused", unmet=problem.extra.get("unmet", []), detail=problem.detail
        )
    return MigrationOutcome(id=opportunity_id, status="migrated", version=state.pipeline.version)


@router.post("/v1/opportunities/{opportunity_id}:migrate-pipeline")
async def migrate_pipeline(
    opportunity_id: str, hub: HubDep, client: TemporalDep, key: AdminKey
) -> MigrationOutcome:
    """Re-pin one opportunity to the newest version of its pipeline; 409 with reasons if its stage is gone."""
    view = await _state(client, hub, key.org_id, opportunity_id)
    outcome = await _migrate_one(client, hub, key.org_id, opportunity_id, view.pipeline["name"])
    if outcome.status == "refused":
        raise Problem(409, outcome.detail or "migration refused", title="Refused", unmet=outcome.unmet)
    return outcome


@router.post("/v1/pipelines/{name}/opportunities:migrate")
async def migrate_pipeline_bulk(name: str, hub: HubDep, session: SessionDep, client: TemporalDep, key: AdminKey) -> dict:
    """Re-pin every opportunity on an older version of pipeline ``name`` to its newest version."""
    newest = await get_version(session, key.org_id, "Pipeline", name)
    if newest is None or newest.deleted:
        raise Problem(404, f"pipeline {name!r} not found")
    rows = await list_for_pipeline(session, key.org_id, name, below_version=newest.version)
    gate = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(opportunity_id: str) -> MigrationOutcome:
        async with gate:
            try:
                return await _migrate_one(client, hub, key.org_id, opportunity_id, name)
            except Problem as problem:
                return MigrationOutcome(id=opportunity_id, status="error", detail=problem.detail)

    results = await asyncio.gather(*(one(r.id) for r in rows))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"pipeline": name, "version": newest.version, "counts": counts, "results": [r.model_dump() for r in results]}


@router.get("/v1/pipelines/{name}/metrics")
async def metrics(name: str, session: SessionDep, key: ReaderKey) -> dict:
    """Opportunities per stage, conversion to the next stage, median time in stage (all pinned versions)."""
    newest = await get_version(session, key.org_id, "Pipeline", name)
    if newest is None:
        raise Problem(404, f"pipeline {name!r} not found")
    stages = [s["key"] for s in stages_of(_pinned(newest))]
    return await pipeline_metrics(session, key.org_id, name, stages)

