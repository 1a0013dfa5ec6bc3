"""Determinism: the Replayer runs today's OpportunityWorkflow code over recorded histories.

Two sources: the histories a scenario records in this run (every Update, signal, refusal and a
continue-as-new), and the histories kept in ``tests/histories/`` — recorded by earlier code, so a
change that breaks running workflows fails here. ``opportunity-before-batched-*`` were recorded before the
patch ``transition-effects-batched`` (one effect at a time, the insight as its own activity, no
registration id); ``opportunity-before-date-timers-*`` before the patch ``relative-date-timers`` (no date timers);
``opportunity-run*`` by the current code (a stale timer armed, re-armed and fired).

Payloads in histories are encrypted by the hub's codec; the scenario uses the fixed test key
``HISTORY_VAULT_KEYS`` below so kept histories stay readable. To regenerate them (after a deliberate,
versioned workflow change), run::

    HUB_RECORD_HISTORIES=1 .venv/bin/python -m pytest -q tests/workflows/test_opportunity_replay.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.opportunity_types import (
    STALE,
    ChecklistRequest,
    DateRules,
    DomainEvent,
    DomainSource,
    MigrateRequest,
    OpportunityInput,
    PinnedPipeline,
    TransitionRequest,
    UpsertRequest,
    body_hash,
    workflow_id,
)
from hub.runtime import Hub
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from tests.workflows.opportunity_kit import AiStandIn, apply, main_worker, opportunity_body, rule
from tests.workflows.test_opportunity import CHECKLIST_PIPELINE
from workflows.opportunity import OpportunityWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
HISTORY_VAULT_KEYS = "hist1:" + base64.urlsafe_b64encode(bytes(range(32))).decode()
RECORD = os.environ.get("HUB_RECORD_HISTORIES") == "1"


def replayer() -> Replayer:
    return Replayer(workflows=[OpportunityWorkflow], data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))


async def _scenario(client: Client, hub: Hub, task_queue: str) -> tuple[str, str, int]:
    """Drive one opportunity through every handler; returns its workflow id, first run id and number of runs."""
    oid = f"replay-{task_queue}"
    wid = workflow_id("acme", oid)
    opp = opportunity_body()
    pinned = PinnedPipeline(name="lists", version=1, spec=CHECKLIST_PIPELINE)
    actor = {"id": "u-ae", "role": "ae"}
    async with main_worker(hub, client, task_queue, AiStandIn()):
        handle = await client.start_workflow(
            OpportunityWorkflow.run,
            OpportunityInput(org_id="acme", opportunity_id=oid, opp=opp, body_hash=body_hash(opp), pipeline=pinned,
                             history_limit=60, registration="put-1"),
            id=wid, task_queue=task_queue,
        )  # fmt: skip
        registered = await handle.execute_update(  # the registering PUT (Update-with-Start) gets the state
            OpportunityWorkflow.upsert, UpsertRequest(opp=opp, body_hash=body_hash(opp), registration="put-1"))
        assert registered.stage == "prospect"
        changed = opportunity_body(amount=99.0)
        await handle.execute_update(OpportunityWorkflow.upsert, UpsertRequest(opp=changed, body_hash=body_hash(changed)))
        try:  # refused by the validator: leaves no trace in the history
            await handle.execute_update(OpportunityWorkflow.transition,
                                        TransitionRequest.model_validate({"to": "engage", "actor": actor}))
        except Exception:  # noqa: BLE001 - WorkflowUpdateFailedError
            pass
        await handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={"a": True, "b": True}))
        for event_id, kind, data in (
            ("e1", "contract.signed", {"envelope_id": "env"}),
            ("e2", "slack.action", {"action_id": "approve", "approval": {"decision": "approved", "request": "discount"}}),
            ("e1", "contract.signed", {"envelope_id": "env"}),  # duplicate: ignored
        ):
            await handle.signal(OpportunityWorkflow.domain_event,
                                DomainEvent(type=kind, data=data, source=DomainSource(provider="test", event_id=event_id)))
        await handle.execute_update(OpportunityWorkflow.transition,
                                    TransitionRequest.model_validate({"to": "engage", "actor": actor}))
        v2 = PinnedPipeline(name="lists", version=2, spec=CHECKLIST_PIPELINE)
        await handle.execute_update(OpportunityWorkflow.migrate_pipeline, MigrateRequest(pipeline=v2))
        for i in range(6):
            await handle.execute_update(OpportunityWorkflow.set_checklist, ChecklistRequest(items={"a": i % 2 == 1}))
        # the org's date rules as the rules API sends them (after the last transition, whose preparation sends them
        # with a real day: wait for it, or its newer read replaces this one), with a one-second day: the stale timer,
        # re-armed by the checklist changes, fires below
        while (await handle.query(OpportunityWorkflow.state)).pending:
            await asyncio.sleep(0.05)
        await handle.signal(OpportunityWorkflow.date_rules,
                            DateRules(days={STALE: [1]}, day_seconds=1, read_at=datetime.now(UTC)))
        while (state := await handle.query(OpportunityWorkflow.state)).pending or not state.date_fired:
            await asyncio.sleep(0.05)
    assert state.date_fired and any(r.trigger == STALE and r.fired for r in state.rule_runs)
    assert state.stage == "engage" and state.pipeline.version == 2 and state.approvals["discount"]["decision"]
    return wid, handle.first_execution_run_id or "", state.runs


async def _histories(client: Client, wid: str, first_run: str) -> list[WorkflowHistory]:
    """Every run's history, following the continue-as-new chain from the first run."""
    histories, run_id = [], first_run
    while run_id:
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.HasField("workflow_execution_continued_as_new_event_attributes") else "")  # fmt: skip
    return histories


async def test_replay_histories_recorded_now(temporal_env: WorkflowEnvironment, hub: Hub, task_queue: str) -> None:
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace="default",
        data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))),
    )
    idle = rule("idle", STALE, [{"opportunity.add_task": {"title": "idle"}}])
    idle["spec"]["days"] = 1
    await apply(hub, CHECKLIST_PIPELINE, rule("entered", "stage.entered", [{"opportunity.add_task": {"title": "t"}}]),
                idle)
    wid, first_run, runs = await _scenario(client, hub, task_queue)
    histories = await _histories(client, wid, first_run)
    assert len(histories) >= runs >= 2  # a continue-as-new happened (one more may follow the last effect)
    for history in histories:
        await replayer().replay_workflow(history)  # raises on any non-determinism
    if RECORD:
        for old in HISTORIES.glob("opportunity-run*.json"):  # opportunity-before-*: kept from earlier code
            old.unlink()
        for i, history in enumerate(histories):
            doc = {"workflow_id": wid, "history": json.loads(history.to_json())}
            (HISTORIES / f"opportunity-run{i + 1}.json").write_text(json.dumps(doc, indent=1) + "\n")


async def test_replay_kept_histories() -> None:
    files = sorted(HISTORIES.glob("opportunity-*.json"))
    assert files, f"no kept histories in {HISTORIES}; see this module's docstring to record them"
    for path in files:
        doc = json.loads(path.read_text())
        history = WorkflowHistory.from_json(doc["workflow_id"], doc["history"])
        await replayer().replay_workflow(history)  # raises on any non-determinism
