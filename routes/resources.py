"""Pipelines and rules over HTTP: versioned resources, validation, dry-run and JSON Schemas.

Bodies are JSON or YAML (``Content-Type: application/yaml``); ``GET`` answers YAML when asked
with ``Accept: application/yaml``. Any key of the org may read, validate and dry-run; only
``admin`` keys write. Another org's resource is a 404 like a missing one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from activities import date_triggers, rule_schedules
from connectors.events import MalformedEvent, map_stored
from hub.bounded import evaluate
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep
from hub.problems import Problem
from hub.store import resources as store
from hub.store.inbox import WebhookEvent
from hub.store.opportunities import OpportunityRecord
from hub.store.resources import ResourceVersion, ScopeTie
from rules import limits
from rules.actions import placement
from rules.engine import dry_run
from rules.loader import LoadResult, load_data, load_json_text, load_text
from rules.model import KINDS
from rules.schema import json_schema
from rules.validate import ResourceInvalid, format_path

router = APIRouter(prefix="/v1", tags=["pipelines and rules"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
PLURALS = {"Pipeline": "pipelines", "Rule": "rules"}
MAX_VERSION = 2**31 - 1  # what the database's integer column holds


class ResourcePublic(BaseModel):
    """One version of a resource."""

    kind: str
    name: str
    version: int
    content_hash: str
    enabled: bool
    deleted: bool
    created_by: str
    created_at: datetime
    document: dict[str, Any] = Field(description="the full resource document (empty for a tombstone)")


class ApplyResult(BaseModel):
    """What an apply did."""

    outcome: Literal["created", "changed", "unchanged"]
    resource: ResourcePublic


class ResourcePage(BaseModel):
    """A page of resources (or versions); pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[ResourcePublic]
    next_cursor: str | None


class ValidatedResource(BaseModel):
    """A valid document and what applying it would do."""

    kind: str
    name: str
    outcome: Literal["created", "changed", "unchanged"]


class ValidationReport(BaseModel):
    """Every error of every document (file, line, column, field, message); nothing is applied."""

    valid: bool
    resources: list[ValidatedResource]
    errors: list[dict[str, Any]]


class TestRequest(BaseModel):
    """A dry-run: the event (or a recorded inbox event's id), and optionally draft rule documents to test instead
    of the stored ones."""

    event: dict[str, Any] | None = None
    webhook_event: str | None = Field(
        default=None, max_length=200,
        description="instead of event: the id of a webhook event in the org's inbox; its first domain event, as the "
        "workflows would see it (with the opportunity it names, from the projection)",
    )
    rules: list[dict[str, Any]] | None = None


class PlannedActionPublic(BaseModel):
    """An action a rule would run, params rendered: where it would run (``opportunity``: in the opportunity's
    workflow, ``lead``, ``org``) and, when it could not run for this event, why (the run would record that)."""

    name: str
    params: dict[str, Any]
    runs_for: str
    problem: str | None = None
    step: dict[str, Any] | None = Field(default=None, description="a rule with steps: id, when, on_error, attempts, "
                                        "unless, deferred (rendered at run time from earlier steps), skipped (why)")


class OutcomePublic(BaseModel):
    """What one rule would do with the event, and why."""

    rule: str
    version: int
    fired: bool
    reason: str
    actions: list[PlannedActionPublic]


class TestReport(BaseModel):
    """Dry-run result: one outcome per rule; nothing was run."""

    event: dict[str, Any]
    fired: int
    outcomes: list[OutcomePublic]


def _public(row: ResourceVersion) -> ResourcePublic:
    return ResourcePublic(
        kind=row.kind,
        name=row.name,
        version=row.version,
        content_hash=row.content_hash,
        enabled=row.enabled,
        deleted=row.deleted,
        created_by=row.created_by,
        created_at=row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC),  # SQLite
        document=row.spec,
    )


def _invalid(errors: list[dict[str, Any]], detail: str | None = None) -> Problem:
    first = errors[0] if errors else {}
    summary = detail or (
        f"{first.get('field') or 'document'}: {first.get('message')}" if first else "invalid"
    )
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem(422, f"invalid resource: {summary}{more}", title="Invalid resource", errors=errors)


async def _load_body(request: Request, org_id: str) -> LoadResult:
    """Parse and validate the body's documents (CEL and templates compiled) off the event loop."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type in YAML_TYPES:
        return await evaluate(org_id, load_text, raw, "<body>")
    if content_type not in ("application/json", ""):
        raise Problem(415, f"send application/json or application/yaml, not {content_type!r}")
    return await evaluate(org_id, load_json_text, raw, "<body>")


def _issues_as_errors(exc: ResourceInvalid) -> list[dict[str, Any]]:
    return [
        {
            "file": "<body>",
            "line": None,
            "column": None,
            "field": format_path(i.path),
            "message": i.message,
            "document": 0,
        }
        for i in exc.issues
    ]


def _wants_yaml(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(t in accept for t in YAML_TYPES)


def _yaml_response(document: dict[str, Any]) -> Response:
    return Response(
        yaml.safe_dump(document, sort_keys=False, allow_unicode=True), media_type="application/yaml"
    )


def _add_kind_routes(kind: str) -> None:
    plural = PLURALS[kind]
    label = kind.lower()

    async def get_existing(
        session: SessionDep, org_id: str, name: str, version: int | None = None
    ) -> ResourceVersion:
        row = await store.get_version(session, org_id, kind, name, version)
        if row is None or (version is None and row.deleted):
            what = f"{label} {name!r}" + (f" version {version}" if version is not None else "")
            raise Problem(404, f"{what} not found")
        return row

    @router.get(f"/{plural}", name=f"list_{plural}", summary=f"List {plural}")
    async def list_items(
        session: SessionDep,
        key: ReaderKey,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
    ) -> ResourcePage:
        rows, next_cursor = await store.list_resources(session, key.org_id, kind, limit, cursor)
        return ResourcePage(items=[_public(r) for r in rows], next_cursor=next_cursor)

    @router.get(
        f"/{plural}/{{name}}",
        name=f"get_{label}",
        summary=f"Get a {label}",
        responses={200: {"content": {"application/yaml": {}}}},
    )
    async def get_item(
        name: str,
        request: Request,
        session: SessionDep,
        key: ReaderKey,
        version: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="a past version")] = None,
    ) -> Any:
        row = await get_existing(session, key.org_id, name, version)
        if _wants_yaml(request) and not row.deleted:
            return _yaml_response(row.spec)
        return _public(row)

    @router.get(
        f"/{plural}/{{name}}/versions", name=f"list_{label}_versions", summary=f"Versions of a {label}"
    )
    async def list_item_versions(
        name: str,
        session: SessionDep,
        key: ReaderKey,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
    ) -> ResourcePage:
        after = None
        if cursor:
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10) or int(cursor) > MAX_VERSION:
                raise Problem(422, "invalid cursor")
            after = int(cursor)
        rows, next_cursor = await store.list_versions(session, key.org_id, kind, name, limit, after)
        if not rows and after is None:
            raise Problem(404, f"{label} {name!r} not found")
        return ResourcePage(
            items=[_public(r) for r in rows],
            next_cursor=str(next_cursor) if next_cursor is not None else None,
        )

    @router.put(
        f"/{plural}/{{name}}",
        name=f"apply_{label}",
        summary=f"Create or update a {label}",
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/yaml": {"schema": {"type": "string"}},
                }
            }
        },
        responses={201: {"model": ApplyResult}},
    )
    async def apply_item(
        name: str, request: Request, session: SessionDep, hub: HubDep, key: AdminKey
    ) -> JSONResponse:
        loaded = await _load_body(request, key.org_id)
        if loaded.errors:
            raise _invalid([e.as_dict() for e in loaded.errors])
        if len(loaded.documents) != 1:
            raise _invalid([], f"send exactly one document, got {len(loaded.documents)}")
        doc = loaded.documents[0].data
        if doc.get("kind") != kind:
            raise _invalid([], f"kind must be {kind!r} at /v1/{plural}, got {doc.get('kind')!r}")
        if doc["metadata"]["name"] != name:
            raise _invalid(
                [], f"metadata.name {doc['metadata']['name']!r} does not match the URL name {name!r}"
            )
        try:
            outcome, row = await store.apply_resource(session, key.org_id, doc, actor=f"key:{key.key_id}")
        except ScopeTie as exc:
            raise Problem(409, str(exc.issues[0].message), title="Scope conflict") from None
        except ResourceInvalid as exc:
            raise _invalid(_issues_as_errors(exc)) from None
        if kind == "Rule" and outcome != "unchanged":
            await rule_schedules.rule_changed(hub, key.org_id, name, row)
            await date_triggers.rule_changed(hub, session, key.org_id, name, row)
        result = ApplyResult(outcome=outcome, resource=_public(row))
        return JSONResponse(result.model_dump(mode="json"), status_code=201 if outcome == "created" else 200)

    @router.delete(f"/{plural}/{{name}}", name=f"delete_{label}", summary=f"Delete a {label} (tombstone)")
    async def delete_item(name: str, session: SessionDep, hub: HubDep, key: AdminKey) -> ResourcePublic:
        row = await store.delete_resource(session, key.org_id, kind, name, actor=f"key:{key.key_id}")
        if row is None:
            raise Problem(404, f"{label} {name!r} not found")
        if kind == "Rule":
            await rule_schedules.rule_changed(hub, key.org_id, name, row)
            await date_triggers.rule_changed(hub, session, key.org_id, name, row)
        return _public(row)


_add_kind_routes("Pipeline")
_add_kind_routes("Rule")


async def _set_enabled(name: str, enabled: bool, session: SessionDep, hub: HubDep, key: AdminKey) -> ApplyResult:
    row = await store.get_version(session, key.org_id, "Rule", name)
    if row is None or row.deleted:
        raise Problem(404, f"rule {name!r} not found")
    document = {**row.spec, "spec": {**row.spec["spec"], "enabled": enabled}}
    outcome, new = await store.apply_resource(session, key.org_id, document, actor=f"key:{key.key_id}")
    if outcome != "unchanged":
        await rule_schedules.rule_changed(hub, key.org_id, name, new)
        await date_triggers.rule_changed(hub, session, key.org_id, name, new)
    return ApplyResult(outcome=outcome, resource=_public(new))


@router.post("/rules/{name}:disable", summary="Disable a rule (a new version)")
async def disable_rule(name: str, session: SessionDep, hub: HubDep, key: AdminKey) -> ApplyResult:
    """Keep the rule but stop it from running; ``unchanged`` if it already is disabled."""
    return await _set_enabled(name, False, session, hub, key)


@router.post("/rules/{name}:enable", summary="Enable a rule (a new version)")
async def enable_rule(name: str, session: SessionDep, hub: HubDep, key: AdminKey) -> ApplyResult:
    """Let a disabled rule run again."""
    return await _set_enabled(name, True, session, hub, key)


_BODY = {
    "requestBody": {
        "content": {"application/json": {"schema": {}}, "application/yaml": {"schema": {"type": "string"}}}
    }
}


@router.post("/resources:validate", summary="Validate resources without applying them", openapi_extra=_BODY)
@router.post(
    "/rules:validate",
    summary="Validate resources without applying them (alias)",
    openapi_extra=_BODY,
    include_in_schema=False,
)
async def validate_resources(request: Request, session: SessionDep, key: ReaderKey) -> ValidationReport:
    """Every error with line, column and field; for valid documents, what applying would do."""
    loaded = await _load_body(request, key.org_id)
    errors = [e.as_dict() for e in loaded.errors]
    resources: list[ValidatedResource] = []
    for doc in loaded.documents:
        if doc.errors or doc.resource is None:
            continue
        try:
            outcome, row = await store.apply_resource(
                session, key.org_id, doc.data, actor="validate", dry_run=True
            )
        except ResourceInvalid as exc:
            for issue in exc.issues:
                line, col = doc.positions.get(issue.path, doc.positions.get((), (1, 1)))
                errors.append(
                    {
                        "file": loaded.file,
                        "line": line,
                        "column": col,
                        "field": format_path(issue.path),
                        "message": issue.message,
                        "document": doc.index,
                    }
                )
            continue
        resources.append(ValidatedResource(kind=row.kind, name=row.name, outcome=outcome))
    return ValidationReport(valid=not errors, resources=resources, errors=errors)


def _report(event: dict[str, Any], outcomes: list[Any]) -> TestReport:
    return TestReport(
        event=event,
        fired=sum(o.fired for o in outcomes),
        outcomes=[
            OutcomePublic(
                rule=o.rule,
                version=o.version,
                fired=o.fired,
                reason=o.reason,
                actions=[PlannedActionPublic(name=a.name, params=a.params, step=a.step, **_placed(a.name, event))
                         for a in o.actions],
            )
            for o in outcomes
        ],
    )


def _placed(name: str, event: dict[str, Any]) -> dict[str, Any]:
    runs_for, problem = placement(name, event)
    return {"runs_for": runs_for, "problem": problem}


def _stored(row: ResourceVersion) -> dict[str, Any]:
    """A stored rule as plain data, for the evaluation process."""
    return {"name": row.name, "version": row.version, "spec": row.spec}


async def _recorded(session: SessionDep, org_id: str, event_id: str) -> dict[str, Any]:
    """The rule event of a recorded inbox event's first domain event, as the workflows build it: in the
    opportunity it names (its projected state) or, naming none, for the org."""
    row = await session.get(WebhookEvent, event_id)
    if row is None or row.org_id != org_id:
        raise Problem(404, f"webhook event {event_id!r} not found")
    try:
        _, mapped = map_stored(row.provider, row.event_type, row.body, row.content_type)
    except MalformedEvent as exc:
        raise Problem(422, f"webhook event {event_id!r} cannot be mapped: {exc}") from None
    if not mapped.events:
        raise Problem(422, f"webhook event {event_id!r} raises no domain event: {mapped.ignored}")
    first = mapped.events[0]
    record = await session.get(OpportunityRecord, (org_id, first.opportunity_id)) if first.opportunity_id else None
    if record is None:
        return {"type": first.type, "stage": None, "opp": {}, "event": first.data, "org": org_id}
    state = record.state or {}
    opp = {**state.get("opp", {}), "id": record.id, "stage": record.stage, "insight": state.get("insight") or {}}
    data = {"type": first.type, "data": first.data, "source": {"provider": row.provider, "event_id": row.id}}
    return {"type": first.type, "stage": None, "opp": opp, "event": data, "org": org_id,
            "branch": opp.get("branch"), "role": opp.get("owner_role")}


async def _event(body: TestRequest, session: SessionDep, org_id: str) -> dict[str, Any]:
    if (body.event is None) == (body.webhook_event is None):
        raise Problem(422, "give either event or webhook_event")
    if body.webhook_event is not None:
        return await _recorded(session, org_id, body.webhook_event)
    limits.check(body.event, "event")
    event = dict(body.event or {})
    if event.get("org") not in (None, org_id):
        raise Problem(422, f"event.org {event['org']!r} is not your org")
    event["org"] = org_id
    if not isinstance(event.get("type"), str):
        raise Problem(422, "event.type is required, e.g. 'stage.entered'")
    return event


@router.post("/rules:test", summary="Dry-run the org's rules (or draft rules) against an event")
async def test_rules(body: TestRequest, session: SessionDep, key: ReaderKey) -> TestReport:
    """Which rules fire, which do not and why, and the rendered actions; nothing is run or stored."""
    event = await _event(body, session, key.org_id)
    if body.rules is None:
        rows = await store.current_versions(session, key.org_id, "Rule")
        return _report(event, await evaluate(key.org_id, dry_run, [_stored(r) for r in rows], event))
    limits.check(body.rules, "rules")
    drafts = []
    for i, doc in enumerate(body.rules):
        loaded = await evaluate(key.org_id, load_data, doc, f"rules[{i}]")
        if loaded.errors:
            raise _invalid([e.as_dict() for e in loaded.errors])
        drafts.append({**doc, "version": 0})
    return _report(event, await evaluate(key.org_id, dry_run, drafts, event))


@router.post("/rules/{name}:test", summary="Dry-run one rule against an event")
async def test_rule(
    name: str,
    body: TestRequest,
    session: SessionDep,
    key: ReaderKey,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> TestReport:
    """The named rule's outcome for the event (its latest version, or ``?version=``)."""
    event = await _event(body, session, key.org_id)
    row = await store.get_version(session, key.org_id, "Rule", name, version)
    if row is None or row.deleted:
        raise Problem(404, f"rule {name!r} not found")
    return _report(event, await evaluate(key.org_id, dry_run, [_stored(row)], event))


@router.get("/schemas/{kind}", summary="JSON Schema of a resource kind, for editors")
async def get_schema(kind: str) -> JSONResponse:
    """The JSON Schema of ``Pipeline`` or ``Rule`` (case-insensitive); public, it holds no org data."""
    canonical = {k.lower(): k for k in KINDS}.get(kind.lower().removesuffix(".json"))
    if canonical is None:
        raise Problem(404, f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
    return JSONResponse(json_schema(canonical), media_type="application/schema+json")
