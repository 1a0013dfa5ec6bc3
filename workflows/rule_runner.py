"""Running rules from inside a workflow: plan, execute each planned action as an activity, record runs.

The plan is an activity (``rules.plan``): it loads the org's *current* rule versions and evaluates
them with ``rules.engine``. Evaluating in an activity rather than in the workflow means a rule saved
now applies to every running opportunity at its next event, without signalling workflows or
carrying rule specs in their inputs; the activity's result (rule name, version, rendered actions) is
recorded in the history, so replays are deterministic and each run names the version it used.

Each action becomes one activity: provider actions (``slack.post_message``, ...) run through
``connector.run_action`` on the provider's task queue; ``http.post`` runs as the main-queue activity of
``activities.http_action``; built-ins the calling workflow handles itself (``opportunity.set_field``,
``ai.next_action``, ...) are passed in as ``local_actions``; a built-in the event cannot run (an
``opportunity.*`` action for an event naming no opportunity) fails with the reason ``rules.actions.placement``
gives. Every action gets a deterministic idempotency key ``{key_prefix}/{event}.{trigger}/{rule}/{index}``, so a
retried or replayed run never repeats a side effect under a new key. A failing action is recorded with its
params, error, attempts and duration, does not stop the other actions or rules, and raises
``automation.failed`` (once: failures of ``automation.failed`` rules raise nothing), run by the same runner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.connector_types import ActionCall, execute_action
    from activities.rule_types import (
        ActionOutcome,
        PlannedActionModel,
        RecordRunsInput,
        RulePlan,
        RulePlanInput,
        RuleRun,
        StepControl,
    )
    from rules.actions import placement
    from rules.steps import StepProblem, prepare, rule_variables

PLAN = "rules.plan"
RECORD_RUNS = "rules.record_runs"
HTTP_POST = "http.post"
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
HTTP_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=60))
#: Action namespaces of the hub itself (see ``rules.actions``): never sent to a provider queue.
BUILTIN_NAMESPACES = frozenset({"opportunity", "ai", "http"})

#: ``on_error: retry``: the wait before the second run of a step, doubled before each further one, at most the max.
RETRY_BACKOFF = timedelta(seconds=1)
MAX_RETRY_BACKOFF = timedelta(minutes=5)

AUTOMATION_FAILED = "automation.failed"
FAILED_PATCH = "automation-failed"  # workflow.patched: histories before it raise no automation.failed

#: A built-in action handled by the calling workflow: (action, idempotency key, rule event) -> output.
LocalAction = Callable[[PlannedActionModel, str, dict], Awaitable[dict]]


def failure_message(exc: BaseException) -> str:
    """The innermost message of an activity failure (the provider's own error), for the run record."""
    while isinstance(exc, ActivityError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, ApplicationError) and exc.type:
        return f"{exc.type}: {exc.message}"
    return str(exc)


class RuleRunner:
    """Plans and runs the rules of one org for events of one subject (the calling workflow's id)."""

    def __init__(self, org_id: str, subject: str, local_actions: dict[str, LocalAction] | None = None) -> None:
        self.org_id = org_id
        self.subject = subject
        self.local_actions = local_actions or {}

    async def run(self, events: list[dict], key_prefix: str) -> list[RuleRun]:
        """Evaluate the rules for ``events``, run the fired rules' actions in order, record every outcome."""
        return await self.execute(await self.plan(events), key_prefix, events)

    async def plan(self, events: list[dict]) -> RulePlan:
        """What the org's current rules do with ``events`` (activity ``rules.plan``)."""
        return await workflow.execute_activity(
            PLAN,
            RulePlanInput(org_id=self.org_id, events=events),
            result_type=RulePlan,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )

    async def execute(self, plan: RulePlan, key_prefix: str, events: list[dict] | None = None) -> list[RuleRun]:
        """Run a plan's fired actions in order under keys ``{key_prefix}/{event}.{trigger}/{rule}/{index}``;
        record every outcome (activity ``rules.record_runs``); then the ``automation.failed`` rules for the
        actions that failed. ``events``: the planned events (what the actions' subject is)."""
        events = events or []
        runs: list[RuleRun] = []
        failed: list[dict] = []
        for outcome in plan.outcomes:
            key = f"{key_prefix}/{outcome.event}.{outcome.trigger}/{outcome.rule}"
            event = events[outcome.event] if outcome.event < len(events) else {"type": outcome.trigger}
            actions: list[ActionOutcome] = []
            stopped = None
            if outcome.fired:
                actions, stopped = await self._run_steps(outcome.actions, key, event)
            runs.append(
                RuleRun(
                    key=key,
                    trigger=outcome.trigger,
                    rule=outcome.rule,
                    version=outcome.version,
                    fired=outcome.fired,
                    reason=outcome.reason + (f"; stopped at step {stopped}" if stopped else ""),
                    actions=actions,
                    at=workflow.now(),
                )
            )
            if outcome.trigger != AUTOMATION_FAILED:
                failed += [self._failure_event(runs[-1], i, a, event) for i, a in enumerate(actions) if a.failed]
        if runs:
            await workflow.execute_activity(
                RECORD_RUNS,
                RecordRunsInput(org_id=self.org_id, subject=self.subject, runs=runs),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STORE_RETRY,
            )
        if failed and plan.on_failure and workflow.patched(FAILED_PATCH):
            runs += await self.execute(await self.plan(failed), f"{key_prefix}/failed", failed)
        return runs

    async def _run_steps(
        self, planned: list[PlannedActionModel], key: str, event: dict
    ) -> tuple[list[ActionOutcome], str | None]:
        """Run a fired rule's actions in order under ``{key}/{index}``; for steps (``action.step``), make each
        step's output available to later ones and apply ``on_error``. Returns the outcomes and the step a
        failure stopped the run at (None if none did)."""
        done: list[ActionOutcome] = []
        outputs: dict[str, dict] = {}
        stopped: str | None = None
        for index, action in enumerate(planned):
            step = action.step
            if step is None:  # a plain action: exactly as before steps existed
                done.append(await self.run_action(action, f"{key}/{index}", event))
                continue
            outcome = await self._run_step(action, step, f"{key}/{index}", event, outputs, stopped)
            done.append(outcome)
            if step.id:
                outputs[step.id] = {"output": outcome.output, "status": outcome.status}
            if outcome.failed and step.on_error != "continue" and stopped is None:
                stopped = step.id or f"do[{index}]"
        return done, stopped

    async def _run_step(
        self, action: PlannedActionModel, step: StepControl, key: str, event: dict, outputs: dict, stopped: str | None
    ) -> ActionOutcome:
        """One step: skipped (its ``when`` false, or the run stopped), else prepared from earlier steps' outputs
        if deferred and run up to ``attempts`` times (``on_error: retry``) under the same key."""
        outcome = ActionOutcome(name=action.name, idempotency_key=key, ok=False, params=action.params, step=step.id)
        skipped = f"not run: step {stopped} failed (on_error: stop)" if stopped else step.skipped
        if step.deferred and not skipped:
            try:
                params, skipped = prepare(action.params, step.when, {**rule_variables(event), "steps": outputs})
            except StepProblem as exc:
                return outcome.model_copy(update={"status": "failed", "error": str(exc)})
            action = action.model_copy(update={"params": params or {}})
        if skipped:
            return outcome.model_copy(update={"status": "skipped", "reason": skipped})
        runs = step.attempts if step.on_error == "retry" else 1
        for attempt in range(1, runs + 1):
            if attempt > 1:
                await workflow.sleep(min(RETRY_BACKOFF * 2 ** (attempt - 2), MAX_RETRY_BACKOFF))
            outcome = await self.run_action(action, key, event)
            if outcome.ok:
                break
        return outcome.model_copy(
            update={"status": "ok" if outcome.ok else "failed", "step": step.id, "attempts": attempt}
        )

    def _failure_event(self, run: RuleRun, index: int, action: ActionOutcome, event: dict) -> dict:
        """The ``automation.failed`` event of one failed action, about the same opportunity as its event."""
        return {
            **{k: event.get(k) for k in ("opp", "branch", "role")},
            "org": self.org_id,
            "type": AUTOMATION_FAILED,
            "stage": None,
            "event": {"rule": run.rule, "version": run.version, "trigger": run.trigger, "run": run.key,
                      "subject": self.subject, "action": action.name, "index": index, "error": action.error},
        }  # fmt: skip

    async def run_action(self, action: PlannedActionModel, key: str, event: dict | None = None) -> ActionOutcome:
        """Run one action under ``key`` for ``event``; a failure is returned as an outcome, never raised."""
        started = workflow.now()
        outcome = ActionOutcome(name=action.name, idempotency_key=key, ok=False, params=action.params)
        try:
            outcome.output = await self._dispatch(action, key, event or {})
            outcome.ok = True
        except (ActivityError, ApplicationError) as exc:
            outcome.error = failure_message(exc)
        outcome.duration_ms = int((workflow.now() - started).total_seconds() * 1000)
        return outcome

    async def _dispatch(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        local = self.local_actions.get(action.name)
        if local is not None:
            return await local(action, key, event)
        if action.name == HTTP_POST:  # activities.http_action (main queue; params checked there)
            return await workflow.execute_activity(
                HTTP_POST,
                {"org_id": self.org_id, "params": action.params, "idempotency_key": key},
                result_type=dict,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=HTTP_RETRY,
            )
        if action.name.split(".", 1)[0] in BUILTIN_NAMESPACES:
            _, problem = placement(action.name, event)
            raise ApplicationError(problem or f"{action.name} cannot run in {self.subject}", type="NotRunnableHere")
        call = ActionCall(org_id=self.org_id, action=action.name, params=action.params, idempotency_key=key)
        return (await execute_action(call)).output
