"""Determinism of the rule behaviour of OpportunityWorkflow: ``opportunity.created``, hub-owned fields and their
CRM events, ``opportunity.transition`` (refused, then accepted), ``automation.failed``, a retried action and
closing. Replays a history recorded now and the kept ones (``tests/histories/rules-opportunity-*.json``); to
record them again after a deliberate, versioned change::

    HUB_RECORD_HISTORIES=1 .venv/bin/python -m pytest -q tests/workflows/test_rule_replay.py
"""

from __future__ import annotations

import asyncio
import json

from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.opportunity_types import (
    Actor,
    CloseRequest,
    DomainEvent,
    DomainSource,
    OpportunityInput,
    PinnedPipeline,
    UpsertRequest,
    body_hash,
    workflow_id,
)
from activities.rule_types import PlannedActionModel, RetryActionInput
from hub.runtime import Hub
from hub.store.opportunities import RuleRunRecord
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, opportunity_body, rule
from tests.workflows.test_opportunity_replay import HISTORIES, HISTORY_VAULT_KEYS, RECORD, replayer
from workflows.opportunity import OpportunityWorkflow

PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "signed"},
    "spec": {"stages": [{"key": "open", "name": "Open", "color": "#6B7280", "probability": 0.1,
                         "documents": ["signed_contract"]},
                        {"key": "won", "name": "Won", "color": "#16A34A", "probability": 1.0}],
             "transitions": [{"from": "open", "to": "won", "when": "documents.signed_contract"}]},
}  # fmt: skip
KEPT = "rules-opportunity-run*.json"


async def test_replay_rule_history_recorded_now(temporal_env: WorkflowEnvironment, hub: Hub, task_queue: str) -> None:
    client = await Client.connect(temporal_env.client.service_client.config.target_host, namespace="default",
                                  data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))
    await apply(
        hub, PIPELINE,
        rule("created", "opportunity.created", [
            {"opportunity.set_field": {"field": "forecast_category", "value": "commit"}},
            {"opportunity.add_task": {"title": "kickoff"}}, {"ai.next_action": {}},
            {"opportunity.transition": {"to": "won"}}]),
        rule("failed", "automation.failed", [{"opportunity.add_task": {"title": "fix {{ event.action }}"}}]),
        rule("signed", "contract.signed", [{"opportunity.transition": {"to": "won", "reason": "signed"}}]),
    )  # fmt: skip
    oid = f"rules-{task_queue}"
    wid = workflow_id("acme", oid)
    opp = opportunity_body()
    async with main_worker(hub, client, task_queue, AiStandIn()):
        handle = await client.start_workflow(
            OpportunityWorkflow.run,
            OpportunityInput(org_id="acme", opportunity_id=oid, opp=opp, body_hash=body_hash(opp),
                             pipeline=PinnedPipeline(name="signed", version=1, spec=PIPELINE)),
            id=wid, task_queue=task_queue,
        )  # fmt: skip

        async def settled() -> None:
            while (await handle.query(OpportunityWorkflow.state)).pending:
                await asyncio.sleep(0.05)

        await settled()
        changed = {**opp, "forecast_category": "pipeline", "amount": 1.0}
        await handle.execute_update(OpportunityWorkflow.upsert, UpsertRequest(opp=changed, body_hash=body_hash(changed)))
        await settled()
        async with hub.db.session() as session:
            run = await session.get(RuleRunRecord, 1)
        await handle.execute_update(OpportunityWorkflow.retry_action, RetryActionInput(
            org_id="acme", run_id=run.id, run_key=run.key, index=3,
            action=PlannedActionModel(name="opportunity.transition", params={"to": "won"}),
            idempotency_key=run.actions[3]["idempotency_key"]))  # fmt: skip
        await handle.signal(OpportunityWorkflow.domain_event, DomainEvent(
            type="contract.signed", data={}, source=DomainSource(provider="test", event_id="env-1")))
        await settled()
        await handle.execute_update(OpportunityWorkflow.close, CloseRequest(actor=Actor(id="u", role="ae"),
                                                                            archive=True))
        await settled()
        state = await handle.query(OpportunityWorkflow.state)
    assert state.stage == "won" and state.archived and state.opp["forecast_category"] == "commit"
    assert [t["title"] for t in state.opp["tasks"]] == ["kickoff", "fix opportunity.transition"]
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if RECORD:
        doc = {"workflow_id": wid, "history": json.loads(history.to_json())}
        (HISTORIES / KEPT.replace("*", "1")).write_text(json.dumps(doc, indent=1) + "\n")


async def test_replay_kept_rule_histories() -> None:
    files = sorted(HISTORIES.glob(KEPT))
    assert files, f"no kept histories {KEPT} in {HISTORIES}"
    for path in files:
        doc = json.loads(path.read_text())
        await replayer().replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))
