"""What deleting an org stops in Temporal: its schedules (rules, syncs, Graph subscriptions, retraining) and its
running workflows (opportunities, connections, syncs, training, scheduled runs), found by the org in their ids."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from hub.temporal import delete_schedule

#: Kinds of id that name the org as their second part: ``{kind}/{org}/…`` (workflows and schedules).
ORG_KINDS = ("opportunity", "connection", "sync", "graph-subscription", "ai-training", "rule")
RETRAIN = "ai-retrain"  # the org's retraining schedule is ``ai-retrain/{org}``, its runs ``ai-retrain/{org}-<time>``


def owned(identifier: str, org_id: str) -> bool:
    """Whether a workflow or schedule id belongs to ``org_id``."""
    kind, _, rest = identifier.partition("/")
    if kind == RETRAIN:
        return rest == org_id or rest.startswith(f"{org_id}-")
    return kind in ORG_KINDS and rest.startswith(f"{org_id}/")


def check_org_id(org_id: str) -> None:
    """Raise ``ValueError`` for what cannot be an org id (it goes into ids and visibility queries)."""
    if not org_id or any(c in org_id for c in "'\"\\/"):
        raise ValueError(f"not an org id: {org_id!r}")


async def stop_org_work(client: Client, org_id: str) -> tuple[int, int]:
    """Delete the org's schedules, then terminate its running workflows (children go with their parents);
    returns (schedules deleted, workflows terminated). Safe to run again."""
    check_org_id(org_id)
    schedules = 0
    async for entry in await client.list_schedules():
        if owned(entry.id, org_id) and await delete_schedule(client, entry.id):
            schedules += 1
    prefixes = [f"{kind}/{org_id}/" for kind in ORG_KINDS] + [f"{RETRAIN}/{org_id}"]
    query = " OR ".join(f"WorkflowId STARTS_WITH '{p}'" for p in prefixes)
    terminated = 0
    async for execution in client.list_workflows(f"ExecutionStatus = 'Running' AND ({query})"):
        if not owned(execution.id, org_id):
            continue  # ``ai-retrain/acme`` also starts ``ai-retrain/acme2-…``
        try:
            await client.get_workflow_handle(execution.id, run_id=execution.run_id).terminate("org deleted")
            terminated += 1
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return schedules, terminated
