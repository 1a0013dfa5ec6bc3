"""The pure evaluation API runs inside a real Temporal workflow (sandboxed, deterministic)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from rules.defaults import PEAK_PIPELINE
    from rules.engine import compile_rules
    from rules.loader import load_path
    from rules.pipeline import TransitionContext, compile_pipeline
    from worker import WORKFLOW_RUNNER


@workflow.defn(sandboxed=True)
class EvaluateInWorkflow:
    @workflow.run
    async def run(self, docs: dict) -> dict:
        pipeline = compile_pipeline(docs["pipeline"])
        unmet = pipeline.check_transition(
            TransitionContext(opp={"amount": 1.0}, stage="prospect", actor={"id": "u", "role": "ae"}),
            "engage",
        )
        rules = compile_rules([{**docs["rule"], "version": 4}])
        fired = rules.fired({"type": "lead.created", "lead": {"company": "Initech"}})
        return {
            "unmet": [u.code for u in unmet],
            "fired": [(o.rule, o.version, o.actions[0].params) for o in fired],
        }


async def test_pipeline_and_rules_evaluate_in_the_workflow_sandbox(client: Client, task_queue: str) -> None:
    rule = {
        "apiVersion": "fulqrun.io/v1",
        "kind": "Rule",
        "metadata": {"name": "r"},
        "spec": {
            "on": "lead.created",
            "do": [{"opportunity.add_task": {"title": "Call {{ lead.company }}"}}],
        },
    }
    docs = {"pipeline": load_path(PEAK_PIPELINE).documents[0].data, "rule": rule}
    async with Worker(client, task_queue=task_queue, workflows=[EvaluateInWorkflow], workflow_runner=WORKFLOW_RUNNER):
        result = await client.execute_workflow(
            EvaluateInWorkflow.run,
            docs,
            id=f"rules-{uuid.uuid4()}",
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=30),
        )
    assert result["unmet"] == ["checklist_incomplete"] * 3 + ["criteria_not_met"]
    assert result["fired"] == [["r", 4, {"title": "Call Initech"}]]
