"""The OpenAI refinement of a next-action insight, run from a workflow like every provider call.

``ai.next_action`` computes the local answer; when the org has OpenAI on with an active connection, the
insight carries its ``refinement``. ``refined`` runs that ``openai.complete_json`` call as
``connector.run_action`` on the ``openai`` provider queue (the connection is the fairness key; each request
draws from the connection's budget), then ``ai.refine_next_action`` merges the answer or, when there is
none, keeps the local list with the reason:

- ``no_connection``: the connection is gone or disabled (``ConnectionUnavailable``);
- ``rate_limited``: OpenAI answered 429 on every attempt;
- ``timeout``: OpenAI did not answer within the connection's ``timeout_seconds``;
- ``budget``: no answer within the deadline although OpenAI never timed out: the request waited for the
  connection's budget or queue (the connector's own timeout would have answered first otherwise);
- ``provider_error``: any other provider failure; ``invalid_answer`` is decided by the merge.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.ai import AiActivities
    from activities.ai_types import Insight, OpportunityInsightInput, RefineInput
    from activities.connector_types import (
        ERR_CONNECTION,
        ERR_RATE_LIMITED,
        NON_RETRYABLE_ERRORS,
        ActionCall,
    )
    from workflows.actions import execute_action

LLM_ACTION = "openai.complete_json"
#: Two attempts at most: a refinement is worth a short wait, never a long one (the local answer stands).
LLM_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2,
                        non_retryable_error_types=NON_RETRYABLE_ERRORS)
APPLY_TIMEOUT = timedelta(seconds=30)
APPLY_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))


def fallback_of(exc: ActivityError) -> tuple[str, str]:
    """(reason, message) of a failed ``openai.complete_json`` run (see the module's list)."""
    cause: BaseException | None = exc
    while isinstance(cause, ActivityError | TimeoutError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        reason = ("no_connection" if cause.type == ERR_CONNECTION else
                  "rate_limited" if cause.type == ERR_RATE_LIMITED else
                  "timeout" if details.get("code") == "timeout" else "provider_error")
        return reason, f"{cause.type}: {cause.message}"
    if isinstance(cause, TimeoutError):
        return "budget", f"no answer before the deadline ({cause.type.name if cause.type else 'timeout'}): " \
                         "the request waited for the connection's budget or queue"
    return "provider_error", str(cause)


async def refined(request: OpportunityInsightInput, insight: Insight) -> Insight:
    """``insight`` with its pending OpenAI refinement run (on the ``openai`` queue) and applied; as is if none.
    Never raises: whatever fails, the local answer stands with the reason."""
    refinement = insight.refinement
    if refinement is None:
        return insight
    started = workflow.now()
    answer, fallback = None, None
    timeout = refinement.timeout_seconds
    try:
        result = await execute_action(
            ActionCall(org_id=request.org_id, action=LLM_ACTION, params=refinement.params,
                       connection_id=refinement.connection_id),
            start_to_close_timeout=timedelta(seconds=timeout + 2),  # the connector's own timeout comes first
            schedule_to_close_timeout=timedelta(seconds=2 * timeout + 4),
            retry_policy=LLM_RETRY,
        )
        answer = result.output
    except ActivityError as exc:
        fallback = fallback_of(exc)
    latency_ms = (workflow.now() - started).total_seconds() * 1000
    try:
        return await workflow.execute_activity_method(
            AiActivities.refine_next_action,
            RefineInput(request=request, insight=insight, answer=answer, fallback=fallback, latency_ms=latency_ms),
            start_to_close_timeout=APPLY_TIMEOUT,
            retry_policy=APPLY_RETRY,
        )
    except ActivityError as exc:  # the local answer stands (never stored: the store is what failed)
        provenance = {**insight.provenance, "fallback_reason": "provider_error",
                      "fallback": f"the refinement could not be applied: {exc.cause or exc}"}
        return insight.model_copy(update={"refinement": None, "provenance": provenance})
