"""AiTrainingWorkflow: trains a model on an uploaded CSV, off the API process. AiRetrainWorkflow: retrains an
org's models from its own outcomes (started by the org's schedule, ``activities.ai_retraining``).

``POST /v1/ai/models`` stores the upload as a job (``ai_training_jobs``) and starts this workflow
(``ai-training/{org}/{job}``); it runs ``ai.train_model`` on its own task queue (``{main}-ai-training``),
whose worker takes one job at a time and trains in a child process. The activity records the job's
progress and result in the database, where ``GET /v1/ai/models/jobs/{id}`` reads them; the history holds
only ids and the outcome.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ai_retraining import AiRetraining
    from activities.ai_training import AiTraining
    from activities.ai_types import (
        AI_RETRAIN_WORKFLOW,
        AI_TRAINING_WORKFLOW,
        TRAIN_ATTEMPTS,
        RetrainInput,
        RetrainResult,
        TrainModelInput,
        TrainModelResult,
        ai_training_queue,
    )
    from activities.connector_types import org_priority

TRAIN_TIMEOUT = timedelta(minutes=30)
TRAIN_HEARTBEAT = timedelta(seconds=60)
TRAIN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=TRAIN_ATTEMPTS)


@workflow.defn(name=AI_TRAINING_WORKFLOW)
class AiTrainingWorkflow:
    """Runs one training job to its end."""

    @workflow.run
    async def run(self, input: TrainModelInput) -> TrainModelResult:
        return await workflow.execute_activity_method(
            AiTraining.train_model, input,
            task_queue=ai_training_queue(workflow.info().task_queue), priority=org_priority(input.org_id),
            start_to_close_timeout=TRAIN_TIMEOUT, heartbeat_timeout=TRAIN_HEARTBEAT, retry_policy=TRAIN_RETRY,
        )  # fmt: skip


@workflow.defn(name=AI_RETRAIN_WORKFLOW)
class AiRetrainWorkflow:
    """Challenges the org's deal and lead models once (champion / challenger)."""

    @workflow.run
    async def run(self, input: RetrainInput) -> RetrainResult:
        return await workflow.execute_activity_method(
            AiRetraining.retrain, input, task_queue=ai_training_queue(workflow.info().task_queue),
            priority=org_priority(input.org_id), start_to_close_timeout=TRAIN_TIMEOUT, retry_policy=TRAIN_RETRY,
        )  # fmt: skip
