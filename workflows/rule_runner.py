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

Rules with steps (``rules.steps``): a step's output is available to later steps (a step that uses them is
rendered here, right before it runs, with the pure ``rules.steps.prepare``), a step may be skipped by its own
``when``, and ``on_error`` decides what a failure does (``continue``; ``stop``: later steps are skipped;
``retry``: up to ``attempts`` runs under the same key, a growing timer apart, then stop). At its first wait a
run is handed to its own ``RuleRunWorkflow`` (a child, id ``rule-run/{run key}``, abandoned by its parent so it
outlives continue-as-new), recorded ``waiting`` meanwhile; that workflow sleeps on a durable timer, re-checks the
wait's ``unless`` (activity ``rules.recheck``), runs the steps left and records the run (``rules.save_run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.connector_types import ActionCall
    from activities.http_action import HTTP_POST, HttpActions, HttpPostCall
    from activities.rule_runs import RuleActivities
    from activities.rule_types import (
        ActionOutcome,
        PlannedActionModel,
        RecheckInput,
        RecordRunsInput,
        RuleOutcomeModel,
        RulePlan,
        RulePlanInput,
        RuleRun,
        RuleRunInput,
        StepControl,
        rule_run_workflow_id,
    )
    from rules.actions import placement
    from rules.model import APPROVAL, HOLDS
    from rules.steps import StepProblem, prepare, rule_variables, wait_deadline
    from workflows.actions import execute_action

STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
HTTP_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=60))
#: Action namespaces of the hub itself (see ``rules.actions``): never sent to a provider queue.
BUILTIN_NAMESPACES = frozenset({"opportunity", "ai", "http"})

#: ``on_error: retry``: the wait before the second run of a step, doubled before each further one, at most the max.
RETRY_BACKOFF = timedelta(seconds=1)
MAX_RETRY_BACKOFF = timedelta(minutes=5)

RULE_RUN_WORKFLOW = "RuleRunWorkflow"
SLACK_APPROVAL = "slack.post_approval"
MAX_ANSWERS = 100  # approval clicks a RuleRunWorkflow keeps
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


P = ParamSpec("P")
T = TypeVar("T")


def _pure(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call pure rules code (``rules.steps``) from workflow code: deterministic, but Jinja2 compiles templates
    under a ``threading.Lock`` the workflow sandbox would refuse."""
    with workflow.unsafe.sandbox_unrestricted():
        return fn(*args, **kwargs)


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
        return await workflow.execute_activity_method(
            RuleActivities.plan,
            RulePlanInput(org_id=self.org_id, events=events),
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
            note = ""
            if outcome.fired:
                actions, note = await self._run_steps(outcome, key, event)
            runs.append(self._run_record(outcome, key, actions, note))
            if outcome.trigger != AUTOMATION_FAILED:
                failed += [self._failure_event(runs[-1], i, a, event) for i, a in enumerate(actions) if a.failed]
        if runs:
            await workflow.execute_activity_method(
                RuleActivities.record_runs,
                RecordRunsInput(org_id=self.org_id, subject=self.subject, runs=runs),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STORE_RETRY,
            )
        if failed and plan.on_failure and workflow.patched(FAILED_PATCH):
            runs += await self.execute(await self.plan(failed), f"{key_prefix}/failed", failed)
        return runs

    async def _run_steps(
        self, outcome: RuleOutcomeModel, key: str, event: dict, first: int = 0, outputs: dict | None = None,
        done: list[ActionOutcome] | None = None,
    ) -> tuple[list[ActionOutcome], str]:
        """Run a fired rule's actions from ``first`` on, in order under ``{key}/{index}``; for steps
        (``action.step``), make each step's output available to later ones, apply ``on_error`` and hold at
        waits. Returns the outcomes (after ``done``) and a note for the run's reason ("" if none)."""
        done = list(done or [])
        outputs = dict(outputs or {})
        halted, note = None, ""  # why the steps left are not run
        for index in range(first, len(outcome.actions)):
            action, step, action_key = outcome.actions[index], outcome.actions[index].step, f"{key}/{index}"
            if step is None:  # a plain action: exactly as before steps existed
                done.append(await self.run_action(action, action_key, event))
                continue
            if action.name in HOLDS and not (halted or step.skipped):
                result, ended = await self._wait(outcome, index, key, event, outputs, done)
                if result.status == "waiting":  # handed to the run's RuleRunWorkflow, which records the rest
                    return [*done, result], ""
            else:
                result, ended = await self._run_step(action, step, action_key, event, outputs, halted), None
            done.append(result)
            if step.id:
                outputs[step.id] = {"output": result.output, "status": result.status}
            if halted is None and ended:
                halted, note = f"not run: the wait {step.id or f'do[{index}]'} ended the run ({ended})", ended
            elif halted is None and result.failed and (step.on_error != "continue" or action.name in HOLDS):
                where = step.id or f"do[{index}]"
                halted, note = f"not run: step {where} failed (on_error: stop)", f"stopped at step {where}"
        return done, note

    async def _run_step(
        self, action: PlannedActionModel, step: StepControl, key: str, event: dict, outputs: dict, halted: str | None
    ) -> ActionOutcome:
        """One step: skipped (its ``when`` false, or the run halted), else prepared from earlier steps' outputs
        if deferred and run up to ``attempts`` times (``on_error: retry``) under the same key."""
        outcome = ActionOutcome(name=action.name, idempotency_key=key, ok=False, params=action.params, step=step.id)
        skipped = halted or step.skipped
        if step.deferred and not skipped:
            try:
                params, skipped = _pure(prepare, action.params, step.when, {**rule_variables(event), "steps": outputs})
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

    async def _wait(
        self, outcome: RuleOutcomeModel, index: int, key: str, event: dict, outputs: dict, done: list[ActionOutcome]
    ) -> tuple[ActionOutcome, str | None]:
        """A wait or approval step: its deadline (``for`` or ``timeout`` from now, or ``until`` evaluated), then
        :meth:`_hold`. Returns the step's outcome (``waiting`` once handed off, its params rendered) and, if a
        wait's ``unless`` held, why the run ended there."""
        action = outcome.actions[index]
        step = action.step or StepControl()
        base = ActionOutcome(name=action.name, idempotency_key=f"{key}/{index}", ok=False, params=action.params,
                             step=step.id)  # fmt: skip
        variables = {**rule_variables(event), "steps": outputs}
        try:
            if step.deferred:
                params, skipped = _pure(prepare, action.params, step.when, variables)
                if skipped:
                    return base.model_copy(update={"status": "skipped", "reason": skipped}), None
                base.params = params or {}
            until = _pure(wait_deadline, base.params, variables, workflow.now())
        except StepProblem as exc:
            return base.model_copy(update={"status": "failed", "error": str(exc)}), None
        waiting = base.model_copy(update={"status": "waiting", "output": {"until": until.isoformat()}})
        return await self._hold(RuleRunInput(
            org_id=self.org_id, subject=self.subject, event=event, outcome=outcome, index=index, until=until,
            outputs=outputs, run=self._run_record(outcome, key, [*done, waiting], "")))  # fmt: skip

    async def _hold(self, input: RuleRunInput) -> tuple[ActionOutcome, str | None]:
        """Hand the rest of the run to its own ``RuleRunWorkflow`` (a child that outlives this workflow), which
        waits with a durable timer; this run is recorded as ``waiting`` meanwhile."""
        await workflow.start_child_workflow(
            RuleRunWorkflow.run, input, id=rule_run_workflow_id(input.run.key),
            parent_close_policy=ParentClosePolicy.ABANDON,
        )  # fmt: skip
        return input.run.actions[-1], None

    @staticmethod
    def _run_record(outcome: RuleOutcomeModel, key: str, actions: list[ActionOutcome], note: str) -> RuleRun:
        return RuleRun(key=key, trigger=outcome.trigger, rule=outcome.rule, version=outcome.version,
                       fired=outcome.fired, reason=outcome.reason + (f"; {note}" if note else ""), actions=actions,
                       at=workflow.now())  # fmt: skip

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
            return await workflow.execute_activity_method(
                HttpActions.post,
                HttpPostCall(org_id=self.org_id, params=action.params, idempotency_key=key),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=HTTP_RETRY,
            )
        if action.name.split(".", 1)[0] in BUILTIN_NAMESPACES:
            _, problem = placement(action.name, event)
            raise ApplicationError(problem or f"{action.name} cannot run in {self.subject}", type="NotRunnableHere")
        call = ActionCall(org_id=self.org_id, action=action.name, params=action.params, idempotency_key=key)
        return (await execute_action(call)).output


class _Resumed(RuleRunner):
    """The runner of a ``RuleRunWorkflow``: goes on from the wait it was handed, waits where it stands (records
    the run as waiting, sleeps, re-checks ``unless``) and records the run's latest state."""

    def __init__(self, input: RuleRunInput, answers: list[dict]) -> None:
        super().__init__(input.org_id, input.subject)
        self.resume: RuleRunInput | None = input
        self.current = input.run
        self.answers = answers  # approval clicks, as the workflow's signal receives them

    async def save(self, run: RuleRun) -> None:
        """Store the run's latest state (activity ``rules.save_run``)."""
        self.current = run
        await workflow.execute_activity_method(
            RuleActivities.save_run, RecordRunsInput(org_id=self.org_id, subject=self.subject, runs=[run]),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY,
        )  # fmt: skip

    async def _wait(
        self, outcome: RuleOutcomeModel, index: int, key: str, event: dict, outputs: dict, done: list[ActionOutcome]
    ) -> tuple[ActionOutcome, str | None]:
        if self.resume is not None and index == self.resume.index:  # the wait this workflow was started for
            resume, self.resume = self.resume, None
            return await self._hold(resume)
        return await super()._wait(outcome, index, key, event, outputs, done)

    async def _hold(self, input: RuleRunInput) -> tuple[ActionOutcome, str | None]:
        waiting = input.run.actions[-1]
        if waiting.name == APPROVAL:
            return await self._approval(input, waiting), None
        await self.save(input.run)
        if input.until > workflow.now():  # an `until` already past ends the wait at once
            await workflow.sleep(input.until - workflow.now())
        step = input.outcome.actions[input.index].step or StepControl()
        held = False
        if step.unless:
            try:
                held = await workflow.execute_activity_method(
                    RuleActivities.recheck, RecheckInput(org_id=self.org_id, subject=self.subject, unless=step.unless,
                                                         event=input.event, outputs=input.outputs),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY,
                )  # fmt: skip
            except ActivityError as exc:
                return waiting.model_copy(update={"status": "failed", "error": failure_message(exc)}), None
        done = waiting.model_copy(update={"status": "ok", "ok": True, "output": {**waiting.output, "unless": held}})
        return done, (f"unless `{step.unless}` held when the wait ended" if held else None)

    async def _approval(self, input: RuleRunInput, waiting: ActionOutcome) -> ActionOutcome:
        """Post Approve/Reject buttons (``slack.post_approval``, request ``{workflow id}#{index}``), then wait for
        a listed approver's click (signal ``approval``, forwarded by the WebhookEventWorkflow of the Slack
        interactivity delivery) or the timeout: ``approved``, ``by``, ``timed_out``."""
        params, request = waiting.params, f"{workflow.info().workflow_id}#{input.index}"
        opportunity_id = (input.event.get("opp") or {}).get("id")
        post = PlannedActionModel(name=SLACK_APPROVAL, params={
            "channel": params["channel"], "text": params.get("text") or f"Approve {input.run.rule}?",
            "request": request, **({"opportunity_id": str(opportunity_id)} if opportunity_id else {})})  # fmt: skip
        posted = await self.run_action(post, waiting.idempotency_key, input.event)
        if not posted.ok:
            return waiting.model_copy(update={"status": "failed", "error": posted.error})
        await self.save(input.run)
        approvers = set(params["approvers"])

        def answer() -> dict | None:
            return next((a for a in self.answers if a.get("request") == request and a.get("by") in approvers
                         and a.get("org") == self.org_id), None)  # fmt: skip

        try:
            await workflow.wait_condition(lambda: answer() is not None,
                                          timeout=max(input.until - workflow.now(), timedelta(milliseconds=1)))
        except TimeoutError:
            pass
        found = answer()
        output = {"approved": bool(found and found.get("decision") == "approved"), "by": found and found.get("by"),
                  "timed_out": found is None, "until": waiting.output.get("until")}  # fmt: skip
        return waiting.model_copy(update={"status": "ok", "ok": True, "output": output})


@workflow.defn(name=RULE_RUN_WORKFLOW)
class RuleRunWorkflow:
    """The rest of one rule run after a wait (id ``rule-run/{run key}``): a durable timer until the wait ends
    (survives worker restarts), its ``unless`` re-checked, then the steps left, each later wait likewise; the
    run's record follows (``waiting`` while it waits, then its outcome). Cancelling it (``POST
    /v1/rule-runs/{id}:cancel``) records the run as ``cancelled``."""

    def __init__(self) -> None:
        self.answers: list[dict] = []

    @workflow.signal(name="approval")
    def approval(self, answer: dict) -> None:
        """A click on an approval button: ``{decision: approved|rejected, request, by, org}`` (only a listed
        approver's answer to this run's request, delivered by a Slack connection of the run's org, counts)."""
        self.answers.append(answer)
        del self.answers[:-MAX_ANSWERS]

    @workflow.run
    async def run(self, input: RuleRunInput) -> RuleRun:
        runner = _Resumed(input, self.answers)
        try:
            actions, note = await runner._run_steps(
                input.outcome, input.run.key, input.event, input.index, input.outputs, input.run.actions[:-1])
        except asyncio.CancelledError:
            current = runner.current
            cancelled = [a.model_copy(update={"status": "cancelled"}) if a.status == "waiting" else a
                         for a in current.actions]  # fmt: skip
            await runner.save(current.model_copy(update={"actions": cancelled, "reason": current.reason + "; cancelled"}))
            raise
        run = runner._run_record(input.outcome, input.run.key, actions, note)
        await runner.save(run)
        return run
