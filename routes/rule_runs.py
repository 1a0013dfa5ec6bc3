"""``/v1/rule-runs``: every rule run of the org, each action's params, outcome, attempts and duration; retry one
failed action under its original idempotency key (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.opportunity_types import workflow_id
from activities.rule_types import PlannedActionModel, RetryActionInput, rule_run_workflow_id
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep, TemporalDep
from hub.problems import Problem
from hub.store.opportunities import RuleRunRecord, RunFilter, action_status, get_rule_run, list_rule_runs
from hub.store.orgs import record_audit
from routes.paging import decode_cursor, encode_cursor, utc
from rules.model import HOLDS
from workflows.opportunity import OpportunityWorkflow
from workflows.rule_retry import RULE_RETRY

router = APIRouter(prefix="/v1/rule-runs", tags=["rule runs"])

OPPORTUNITY_PREFIX = "opportunity/"
RunStatus = Literal["ok", "failed", "skipped", "waiting", "cancelled"]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="a rule run's id")]
ActionIndex = Annotated[int, Path(ge=0, le=49, description="the action's position in the rule's do list")]
#: Actions the org-level workflows run with the event's lead: the event is not kept, so they cannot be retried.
LEAD_ACTIONS = frozenset({"ai.score_lead", "ai.next_action"})


class ActionRunPublic(BaseModel):
    """One action of a run: rendered params, outcome, how many times it ran, how long the last attempt took."""

    index: int
    name: str
    status: Literal["ok", "failed", "skipped", "waiting", "cancelled"] = Field(
        description="skipped: a step whose `when` was false, or after a step that stopped the run (on_error: stop) "
                    "or a wait whose `unless` held; waiting / cancelled: a wait step")
    step: str | None = Field(description="the step's id, if it has one")
    reason: str | None = Field(description="why a step was skipped")
    params: dict[str, Any]
    output: dict[str, Any]
    error: str | None
    attempts: int
    duration_ms: int | None
    idempotency_key: str


class RuleRunPublic(BaseModel):
    """One rule's outcome for one event."""

    id: int
    rule: str
    version: int
    trigger: str
    status: RunStatus
    reason: str
    subject: str = Field(description="the workflow that ran it")
    opportunity_id: str | None
    at: datetime
    wait_until: datetime | None = Field(description="while waiting: when the wait ends")
    wait_workflow_id: str | None = Field(description="a run with waits: the RuleRunWorkflow that holds them")
    actions: list[ActionRunPublic]


class RuleRunPage(BaseModel):
    """Runs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[RuleRunPublic]
    next_cursor: str | None


class RetryAccepted(BaseModel):
    """A retry under way: poll ``GET /v1/rule-runs/{id}`` for its outcome."""

    run: int
    action: int
    attempt: int
    workflow_id: str


def _opportunity_id(run: RuleRunRecord) -> str | None:
    if not run.subject.startswith(OPPORTUNITY_PREFIX):
        return None
    return run.subject.removeprefix(OPPORTUNITY_PREFIX).partition("/")[2] or None


def _wait_until(run: RuleRunRecord) -> datetime | None:
    until = next((a.get("output", {}).get("until") for a in run.actions if a.get("status") == "waiting"), None)
    return datetime.fromisoformat(until) if until else None


def _public(run: RuleRunRecord) -> RuleRunPublic:
    return RuleRunPublic(
        id=run.id, rule=run.rule, version=run.version, trigger=run.trigger, status=run.status, reason=run.reason,
        subject=run.subject, opportunity_id=_opportunity_id(run), at=utc(run.at), wait_until=_wait_until(run),
        wait_workflow_id=rule_run_workflow_id(run.key) if any(a["name"] in HOLDS for a in run.actions) else None,
        actions=[ActionRunPublic(
            index=i, name=a["name"], status=action_status(a), step=a.get("step"), reason=a.get("reason"),
            params=a.get("params") or {},
            output=a.get("output") or {}, error=a.get("error"), attempts=int(a.get("attempts", 1)),
            duration_ms=a.get("duration_ms"), idempotency_key=a["idempotency_key"],
        ) for i, a in enumerate(run.actions)],
    )  # fmt: skip


@router.get("")
async def list_runs(
    session: SessionDep,
    key: ReaderKey,
    rule: str | None = None,
    status: RunStatus | None = None,
    trigger: str | None = None,
    opportunity: Annotated[str | None, Query(description="an opportunity id")] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> RuleRunPage:
    """The org's rule runs, newest first, filtered by rule, status, trigger, opportunity and time."""
    subject = workflow_id(key.org_id, opportunity) if opportunity else None
    where = RunFilter(rule=rule, status=status, trigger=trigger, subject=subject, since=utc(since))
    rows = await list_rule_runs(session, key.org_id, where, limit + 1, decode_cursor(cursor))
    page = rows[:limit]
    return RuleRunPage(items=[_public(r) for r in page],
                       next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)


async def _own(session: SessionDep, run_id: int, org_id: str) -> RuleRunRecord:
    run = await get_rule_run(session, org_id, run_id)
    if run is None:
        raise Problem(404, f"rule run {run_id} not found")
    return run


@router.get("/{run_id}")
async def get_run(run_id: RunId, session: SessionDep, key: ReaderKey) -> RuleRunPublic:
    """One rule run with each action's outcome."""
    return _public(await _own(session, run_id, key.org_id))


@router.post("/{run_id}/actions/{index}:retry", status_code=202)
async def retry_action(
    run_id: RunId, index: ActionIndex, session: SessionDep, hub: HubDep, client: TemporalDep, key: AdminKey
) -> RetryAccepted:
    """Run one failed action again under its original idempotency key (a provider that saw the first attempt
    sees the same key); an opportunity's own actions are run again by its workflow."""
    run = await _own(session, run_id, key.org_id)
    if not 0 <= index < len(run.actions):
        raise Problem(404, f"rule run {run_id} has no action {index}")
    action = run.actions[index]
    if action_status(action) != "failed":
        raise Problem(409, f"action {index} ({action['name']}) {action_status(action).replace('ok', 'succeeded')}; "
                           "there is nothing to retry")
    attempt = int(action.get("attempts", 1)) + 1
    retry = RetryActionInput(org_id=key.org_id, run_id=run.id, run_key=run.key, index=index,
                             action=PlannedActionModel(name=action["name"], params=action.get("params") or {}),
                             idempotency_key=action["idempotency_key"])  # fmt: skip
    if run.subject.startswith(OPPORTUNITY_PREFIX):
        target = run.subject
        try:
            await client.get_workflow_handle_for(OpportunityWorkflow.run, target).execute_update(
                OpportunityWorkflow.retry_action, retry, id=f"retry/{run.id}/{index}/{attempt}")
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise Problem(409, f"the opportunity's workflow {target} is not running") from None
            raise
        except WorkflowUpdateFailedError as exc:
            raise Problem(409, f"the opportunity refused the retry: {exc.cause}") from None
    elif action["name"] in LEAD_ACTIONS:
        raise Problem(409, f"{action['name']} acts on its event's lead; replay the event (POST "
                           "/v1/webhook-events/{id}:replay) to run it again")
    else:
        target = f"rule-retry/{key.org_id}/{run.id}/{index}/{attempt}"
        await client.start_workflow(RULE_RETRY, retry, id=target, task_queue=hub.settings.task_queue)
    await record_audit(session, key.org_id, key.key_id, "rule_run.action_retried", f"rule_run/{run.id}",
                       {"action": index, "name": action["name"], "attempt": attempt})
    return RetryAccepted(run=run.id, action=index, attempt=attempt, workflow_id=target)


class CancelAccepted(BaseModel):
    """A cancellation under way: the run's workflow records it as ``cancelled``."""

    run: int
    workflow_id: str


@router.post("/{run_id}:cancel", status_code=202)
async def cancel_run(run_id: RunId, session: SessionDep, client: TemporalDep, key: AdminKey) -> CancelAccepted:
    """Cancel a waiting run: its ``RuleRunWorkflow`` (id ``rule-run/{run key}``) stops waiting, the steps left do
    not run, and the run is recorded as ``cancelled``."""
    run = await _own(session, run_id, key.org_id)
    if run.status != "waiting":
        raise Problem(409, f"rule run {run_id} is {run.status}, not waiting; only a waiting run can be cancelled")
    target = rule_run_workflow_id(run.key)
    try:
        await client.get_workflow_handle(target).cancel()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(409, f"the run's workflow {target} is not running") from None
        raise
    await record_audit(session, key.org_id, key.key_id, "rule_run.cancelled", f"rule_run/{run.id}", {})
    return CancelAccepted(run=run.id, workflow_id=target)
