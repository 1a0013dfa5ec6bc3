"""OpportunityWorkflow: one long-lived workflow per opportunity (``opportunity/{org}/{id}``).

Handlers change state synchronously and queue *effects*; the main loop performs the effects in
order, durably (transitions queued together have their effects together: one ``opportunity.prepare``
plans their rules and computes the AI insight, one projection; see ``_transitions_effects``):

- ``transition`` (Update): the validator evaluates the pinned pipeline's ``check_transition`` (pure,
  no I/O) and refuses with every unmet requirement; nothing is recorded for a refused Update.
  The handler re-checks under a lock, so of two concurrent requests validated against the same
  state the second is judged against the state the first left. Accepted: the stage change is
  recorded and the effects follow: ``stage.exited``/``stage.entered`` rules, the new stage's
  SharePoint folders and templates, AI insights, the projection, the signed ``stage.changed``
  CRM event (retried until the CRM accepts it).
- ``upsert`` (Update, from PUT): a body with an unchanged hash is rejected by the validator (no
  history event); a changed body updates fields and fires ``opportunity.updated`` rules. The PUT whose
  Update-with-Start started the workflow (its ``registration`` id) is answered with the first state.
- ``set_checklist`` and ``migrate_pipeline`` (Updates), ``domain_event`` (signal: contract.signed,
  payment.received, call.recorded, slack.action, document.changed — deduplicated by source event id).
- ``state`` (query).
- ``date_rules`` (signal, from the rules API) and the date timers: a task beside the main loop keeps one durable timer
  for the next relative-date point (``opportunity.close_date_approaching`` / ``opportunity.stale``, see
  ``DatePoint``), re-armed when the close date, the last activity or the date rules change, and queues a ``date``
  effect when a point is due (patch ``relative-date-timers``).

Every side-effect key derives from the workflow id and the effect's sequence number, which is
carried across continue-as-new, so replays, retries and restarted workers repeat nothing. The
projection (``opportunity.project``, a revision-guarded upsert) runs as a local activity: idempotent,
short, in the worker that runs the workflow, one server round trip fewer. The first effect of an
accepted Update is a regular activity on purpose: a local activity there would hold the workflow
task, and with it the Update's answer, until it finished.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ai import AiActivities
    from activities.ai_types import DEAL_RISK, NEXT_ACTION, Insight, OpportunityInsightInput
    from activities.connector_types import ActionCall
    from activities.opportunities import OpportunityActivities
    from activities.opportunity_types import (
        CLOSE_DATE_APPROACHING,
        DATE_RULES_SIGNAL,
        MAX_EVENTS,
        MAX_RULE_RUNS,
        MAX_SEEN_EVENTS,
        Actor,
        ChecklistRequest,
        CloseRequest,
        CrmDelivery,
        CrmEventInput,
        DateRules,
        DomainEvent,
        Effect,
        MigrateRequest,
        OpportunityInput,
        OpportunityState,
        Preparation,
        PrepareInput,
        ProjectInput,
        StageVisit,
        TransitionRecord,
        TransitionRequest,
        UpsertRequest,
        body_hash,
        date_points,
        stage_of,
    )
    from activities.rule_types import PlannedActionModel, RetryActionInput, RulePlan
    from rules.pipeline import CompiledPipeline, TransitionContext, Unmet, compile_pipeline
    from rules.templating import TemplateProblem, compile_params
    from workflows.actions import execute_action
    from workflows.ai_refinement import refined
    from workflows.rule_retry import retry_and_record
    from workflows.rule_runner import RuleRunner, failure_message

# ApplicationError types the API maps to HTTP answers.
REFUSED = "TransitionRefused"  # 409, details[0] = list of Unmet
UNCHANGED = "Unchanged"  # 200, nothing to do
INVALID = "InvalidRequest"  # 422, details[0] = list of Unmet
MIGRATION_REFUSED = "MigrationRefused"  # 409, details[0] = list of Unmet

CREATED_PATCH = "opportunity-created"  # workflow.patched: histories before it raise no opportunity.created
CRM_EVENTS_PATCH = "crm-rule-events"  # workflow.patched: histories before it sent rules' changes to no CRM
#: Patch: queued transitions' effects go together, the insight computed by ``opportunity.prepare``.
BATCHED_TRANSITIONS = "transition-effects-batched"
#: Patch: relative-date rules (close date approaching, stale) on durable timers in the main loop.
DATE_TIMERS = "relative-date-timers"
#: Patch: the OpenAI refinement of an insight runs on the ``openai`` queue (``workflows/ai_refinement.py``).
OPENAI_QUEUE_PATCH = "insight-refined-on-openai-queue"
AUTOMATION = Actor(id="automation", role="automation")  # who rule-made transitions are by
OPPORTUNITIES_ROOT = "Opportunities"
MAX_FAILURES = 20
STORE_TIMEOUT = timedelta(seconds=30)
INSIGHT_TIMEOUT = timedelta(seconds=60)
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
AI_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))
CRM_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=5))  # until the CRM accepts
INSIGHTS = {NEXT_ACTION: AiActivities.next_action, DEAL_RISK: AiActivities.deal_risk}  # by activity name


def _refusal(kind: str, message: str, unmet: list[Unmet]) -> ApplicationError:
    return ApplicationError(message, [u.model_dump() for u in unmet], type=kind, non_retryable=True)


def set_path(doc: dict, path: str, value: object) -> None:
    """Set ``a.b.c`` in a nested document (maps made on the way)."""
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(doc.get(part), dict):
            doc[part] = {}
        doc = doc[part]
    doc[leaf] = value


def get_path(doc: dict, path: str, default: object = None) -> object:
    """``a.b.c`` of a nested document, or ``default`` where the path is absent."""
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return default
        doc = doc[part]
    return doc


def opportunity_folder(opportunity_id: str) -> str:
    """The per-opportunity root folder in the org's SharePoint drive."""
    safe = "".join("_" if c in '"*:<>?/\\|#%' else c for c in opportunity_id).strip(". ")
    return f"{OPPORTUNITIES_ROOT}/{safe}"


@workflow.defn
class OpportunityWorkflow:
    """The life of one opportunity through its pinned PEAK pipeline."""

    @workflow.init
    def __init__(self, input: OpportunityInput) -> None:
        self._id = workflow.info().workflow_id
        self._history_limit = input.history_limit
        self._registration = input.registration if input.state is None else None
        self._lock = asyncio.Lock()
        self._rearm = False  # what the date timers count from changed: arm them again
        self._timers: asyncio.Task | None = None
        pipeline = input.state.pipeline if input.state is not None else input.pipeline
        self._compiled: CompiledPipeline = compile_pipeline(pipeline.spec)
        if input.state is not None:
            self._state = input.state
            self._state.runs += 1
        else:
            self._state = self._new_state(input, self._compiled)
        self._rules = RuleRunner(
            self._state.org_id,
            self._id,
            local_actions={
                "ai.next_action": self._ai_action,
                "ai.deal_risk": self._deal_risk_action,
                "opportunity.set_field": self._set_field_action,
                "opportunity.add_task": self._add_task_action,
                "opportunity.transition": self._transition_action,
            },
        )

    @staticmethod
    def _new_state(input: OpportunityInput, pipeline: CompiledPipeline) -> OpportunityState:
        now = workflow.now()
        wanted = input.opp.get("stage")
        initial = wanted if isinstance(wanted, str) and pipeline.stage(wanted) else pipeline.initial_stage
        return OpportunityState(
            org_id=input.org_id,
            opportunity_id=input.opportunity_id,
            opp=input.opp,
            body_hash=input.body_hash,
            pipeline=input.pipeline,
            stage=initial,
            history=[
                TransitionRecord(seq=1, from_stage=None, to_stage=initial, at=now, pipeline_version=input.pipeline.version)
            ],
            visits=[StageVisit(stage=initial, entered_at=now)],
            seq=1,
            revision=1,
            pending=[Effect(kind="transition", seq=1, data={"from": None, "to": initial})],
            created_at=now,
            updated_at=now,
            last_activity_at=now,
        )

    # ---------------------------------------------------------------- main loop: effects, continue-as-new

    @workflow.run
    async def run(self, input: OpportunityInput) -> None:
        if workflow.patched(DATE_TIMERS):
            self._timers = asyncio.create_task(self._date_timers())  # dropped at continue-as-new, re-armed after
        while True:
            await workflow.wait_condition(lambda: bool(self._state.pending) or self._history_full())
            if self._history_full():  # between effects; the queued ones travel in the state
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    OpportunityInput(
                        org_id=self._state.org_id,
                        opportunity_id=self._state.opportunity_id,
                        opp=self._state.opp,
                        body_hash=self._state.body_hash,
                        pipeline=self._state.pipeline,
                        state=self._state,
                        history_limit=self._history_limit,
                    )
                )
            done = await self._perform(self._state.pending[0])
            del self._state.pending[:done]

    async def _date_timers(self) -> None:
        """The relative-date rules' durable timer, beside the main loop (so that a due point is queued on time even
        while the loop waits on a long effect): sleeps until the next point is due or its arming changes."""
        while True:
            self._rearm = False
            try:
                await workflow.wait_condition(lambda: self._rearm, timeout=self._arm_dates())
            except TimeoutError:
                pass  # a point is due: the next round queues it

    def _arm_dates(self) -> timedelta | None:
        """Queue the relative-date rules that are due (each at most once per arming, see ``DatePoint``); the
        time until the next one, for the main loop's durable timer (None: nothing to wait for)."""
        now, s = workflow.now(), self._state
        wait: timedelta | None = None
        for point in date_points(s):
            if s.date_fired.get(point.key) == point.arming:
                continue
            if point.at > now:
                wait = min(wait, point.at - now) if wait else point.at - now
                continue
            s.date_fired[point.key] = point.arming
            if point.until is None or now < point.until:
                self._queue("date", point.event())
        return wait

    def _active(self) -> None:
        """Something happened to the opportunity: the ``opportunity.stale`` clock starts again."""
        self._state.last_activity_at = workflow.now()
        self._rearm = True

    def _history_full(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._history_limit

    async def _perform(self, effect: Effect) -> int:
        """Perform ``effect`` (the first pending one), and with it the transitions queued right after it when
        they can go together; returns how many pending effects are done."""
        prefix = f"{self._id}/{effect.seq}"
        if effect.kind == "transition":
            if workflow.patched(BATCHED_TRANSITIONS):
                return await self._transitions_effects()
            await self._transition_effects(effect, prefix)
            return 1
        if effect.kind == "updated":
            await self._run_rules([self._rule_event("opportunity.updated", effect.data)], prefix)
        elif effect.kind == "event":
            await self._run_rules([self._rule_event(effect.data["type"], effect.data)], prefix)
        elif effect.kind == "date":  # the rules of one relative-date point (``days`` picks them)
            await self._run_rules([{**self._rule_event(effect.data["type"], effect.data), "days": effect.data["days"]}],
                                  prefix)
        elif effect.kind == "retry":
            await self._retry(RetryActionInput.model_validate(effect.data))
        elif len(self._state.pending) > 1:
            return 1  # a plain "project" with more effects queued: the next one projects
        await self._project()
        return 1

    async def _transitions_effects(self) -> int:
        """The effects of the transitions at the head of the queue, together: one ``opportunity.prepare`` plans
        every transition's ``stage.exited``/``stage.entered`` rules and computes the AI insight of the state
        they lead to; then, per transition in order, its rules' actions (keys and runs as one transition
        alone) and its stage's folders; the insight again only if a rule ran a built-in action (those change the
        opportunity or its insight; provider actions do not) or it could not be had; one projection; a CRM
        event per transition."""
        batch = list(itertools.takewhile(lambda e: e.kind == "transition", self._state.pending))
        own_events = [self._transition_events(e.data["from"], e.data["to"]) for e in batch]
        request = self._insight_input()  # its opp, like every event's, is the current one: sent once
        prep: Preparation = await workflow.execute_activity_method(
            OpportunityActivities.prepare,
            PrepareInput(org_id=self._state.org_id, opp=request.opp,
                         events=[{k: v for k, v in e.items() if k != "opp"} for own in own_events for e in own],
                         insight=request.model_copy(update={"opp": {}})),
            start_to_close_timeout=INSIGHT_TIMEOUT,
            retry_policy=STORE_RETRY,
        )  # fmt: skip
        if prep.date_rules is not None:
            self._set_date_rules(prep.date_rules)
        acted, start = False, 0
        for effect, events in zip(batch, own_events, strict=True):
            end, prefix = start + len(events), f"{self._id}/{effect.seq}"
            own = [o.model_copy(update={"event": o.event - start}) for o in prep.plan.outcomes if start <= o.event < end]
            runs = await self._rules.execute(RulePlan(outcomes=own, on_failure=prep.plan.on_failure), prefix, events)
            acted = acted or any(a.name in self._rules.local_actions for run in runs for a in run.actions)
            self._state.rule_runs = (self._state.rule_runs + runs)[-MAX_RULE_RUNS:]
            self._touch()
            if prep.provider_connected:
                await self._provision(stage_of(self._state.pipeline, effect.data["to"]) or {}, prefix)
            start = end
        if not prep.insights:
            pass  # the org's ai.insights flag is off
        elif acted or prep.insight is None:
            await self._recompute_insight(f"transition to {batch[-1].data['to']}")
        else:
            self._state.insight = (await refined(request, prep.insight)).stored()
            self._touch()
        await self._project()
        if prep.crm_callback:
            for effect in batch:
                if effect.data["from"] is not None:  # None: just registered by the CRM, nothing to tell it
                    await self._send_stage_changed(effect)
        return len(batch)

    def _transition_events(self, frm: str | None, to: str) -> list[dict]:
        """The rule events of one transition: ``stage.exited`` (unless just registered), ``stage.entered``, and
        ``opportunity.created`` when just registered."""
        events = [self._rule_event("stage.exited", {}, stage=frm)] if frm else []
        events.append(self._rule_event("stage.entered", {}, stage=to))
        if frm is None:
            events.append(self._rule_event("opportunity.created", {}))
        return events

    async def _transition_effects(self, effect: Effect, prefix: str) -> None:
        """One transition's effects as before patch ``transition-effects-batched`` (kept for running histories)."""
        frm, to = effect.data["from"], effect.data["to"]
        events = [self._rule_event("stage.exited", {}, stage=frm)] if frm else []
        events.append(self._rule_event("stage.entered", {}, stage=to))
        if frm is None and workflow.patched(CREATED_PATCH):  # just registered
            events.append(self._rule_event("opportunity.created", {}))
        prep: Preparation = await workflow.execute_activity_method(
            OpportunityActivities.prepare,
            PrepareInput(org_id=self._state.org_id, events=events),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        runs = await self._rules.execute(prep.plan, prefix, events)
        self._state.rule_runs = (self._state.rule_runs + runs)[-MAX_RULE_RUNS:]
        self._touch()
        stage = stage_of(self._state.pipeline, to) or {}
        if prep.provider_connected:
            await self._provision(stage, prefix)
        if prep.insights:
            await self._recompute_insight(f"transition to {to}")
        await self._project()
        if frm is None or not prep.crm_callback:
            return  # just registered by the CRM (nothing to tell it), or no callback URL
        await self._send_stage_changed(effect)

    async def _send_stage_changed(self, effect: Effect) -> None:
        """The signed ``stage.changed`` event of one transition to the org's CRM (retried until accepted)."""
        frm, to = effect.data["from"], effect.data["to"]
        insight = self._state.insight or {}
        record = next(h for h in reversed(self._state.history) if h.seq == effect.seq)
        delivery = await workflow.execute_activity_method(
            OpportunityActivities.send_crm_event,
            CrmEventInput(
                org_id=self._state.org_id,
                event_id=f"evt_{self._id}/{effect.seq}",
                type="stage.changed",
                occurred_at=record.at,
                data={
                    "opportunity_id": self._state.opportunity_id,
                    "from_stage": frm,
                    "to_stage": to,
                    "transition_seq": effect.seq,
                    "actor": record.actor.model_dump() if record.actor else None,
                    "pipeline": {"name": self._state.pipeline.name, "version": self._state.pipeline.version},
                    "ai_risk_score": insight.get("risk_score"),
                    "ai_next_action": (insight.get("next_actions") or [None])[0],
                },
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=CRM_RETRY,
        )
        self._crm_sent("stage.changed", f"evt_{self._id}/{effect.seq}", delivery)

    def _crm_sent(self, kind: str, event_id: str, delivery: CrmDelivery) -> None:
        """Keep what a signed CRM callback came to (for the opportunity's timeline)."""
        entry = {"type": kind, "event_id": event_id, "at": workflow.now().isoformat(), "delivered": delivery.delivered,
                 "status": delivery.status}
        self._state.crm_events = (self._state.crm_events + [entry])[-MAX_EVENTS:]
        self._touch()

    async def _provision(self, stage: dict, prefix: str) -> None:
        """The stage's folders under the opportunity's root, then its templates (both idempotent)."""
        root = opportunity_folder(self._state.opportunity_id)
        if stage.get("folders"):
            await self._sharepoint(
                "sharepoint.ensure_folders", {"root": root, "folders": stage["folders"]}, f"{prefix}/folders"
            )
        for index, template in enumerate(stage.get("templates", [])):
            key = f"{prefix}/templates/{index}"
            try:
                target = compile_params({"t": template["target"]}).render({"opp": self._rule_opp()})["t"]
            except TemplateProblem as exc:
                self._fail("sharepoint.copy_template", key, exc)
                continue
            await self._sharepoint(
                "sharepoint.copy_template", {"source": template["source"], "target": target, "root": root}, key
            )

    # ---------------------------------------------------------------- effect helpers

    def _rule_opp(self) -> dict:
        s = self._state
        return {**s.opp, "id": s.opportunity_id, "stage": s.stage, "insight": s.insight or {}}

    def _rule_event(self, kind: str, data: dict, stage: str | None = None) -> dict:
        s = self._state
        return {
            "type": kind,
            "stage": stage,
            "opp": self._rule_opp(),
            "event": data,
            "org": s.org_id,
            "branch": s.opp.get("branch"),
            "role": s.opp.get("owner_role"),
        }

    async def _run_rules(self, events: list[dict], prefix: str) -> None:
        runs = await self._rules.run(events, prefix)
        self._state.rule_runs = (self._state.rule_runs + runs)[-MAX_RULE_RUNS:]
        self._touch()

    async def _sharepoint(self, action: str, params: dict, key: str) -> None:
        try:
            await execute_action(ActionCall(org_id=self._state.org_id, action=action, params=params, idempotency_key=key))
        except ActivityError as exc:
            self._fail(action, key, exc)

    def _insight_input(self) -> OpportunityInsightInput:
        s = self._state
        return OpportunityInsightInput(
            org_id=s.org_id,
            opportunity_id=s.opportunity_id,
            opp=self._rule_opp(),
            stage=s.stage,
            checklist=s.checklist,
            events=s.events,
            as_of=workflow.now(),
            refine_on_queue=workflow.patched(OPENAI_QUEUE_PATCH),
        )

    async def _recompute_insight(self, reason: str, activity: str = NEXT_ACTION) -> dict:
        s = self._state
        request = self._insight_input()
        try:
            insight: Insight = await workflow.execute_activity_method(
                INSIGHTS[activity],
                request,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=AI_RETRY,
            )
            insight = await refined(request, insight)
        except ActivityError as exc:
            self._fail(activity, reason, exc)
            return {}
        if activity == DEAL_RISK:  # risk only: the next actions computed before stay
            insight = insight.model_copy(update={"next_actions": (s.insight or {}).get("next_actions", [])})
        s.insight = insight.stored()
        self._touch()
        return s.insight

    async def _project(self) -> None:
        await workflow.execute_local_activity_method(
            OpportunityActivities.project,
            ProjectInput(workflow_id=self._id, state=self._state),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    def _fail(self, what: str, key: str, exc: BaseException) -> None:
        entry = {"what": what, "key": key, "error": failure_message(exc), "at": workflow.now().isoformat()}
        self._state.failures = (self._state.failures + [entry])[-MAX_FAILURES:]
        self._touch()

    def _touch(self) -> None:
        self._state.revision += 1
        self._state.updated_at = workflow.now()

    def _queue(self, kind: str, data: dict | None = None) -> int:
        self._state.seq += 1
        self._state.pending.append(Effect(kind=kind, seq=self._state.seq, data=data or {}))
        self._touch()
        return self._state.seq

    # built-in rule actions handled here (see rules.actions)

    async def _tell_crm(self, kind: str, key: str, data: dict) -> None:
        """What a rule changed, as a signed CRM event (``opportunity.updated``, ``task.created``,
        ``insight.updated``) through the callback of ``stage.changed``: retried until accepted, id from ``key``."""
        if not workflow.patched(CRM_EVENTS_PATCH):
            return
        delivery = await workflow.execute_activity_method(
            OpportunityActivities.send_crm_event,
            CrmEventInput(org_id=self._state.org_id, event_id=f"evt_{key}", type=kind, occurred_at=workflow.now(),
                          data={"opportunity_id": self._state.opportunity_id, **data}),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=CRM_RETRY,
        )  # fmt: skip
        self._crm_sent(kind, f"evt_{key}", delivery)

    async def _ai_action(self, action: PlannedActionModel, key: str, event: dict, activity: str = NEXT_ACTION) -> dict:
        insight = await self._recompute_insight(action.params.get("reason") or key, activity)
        if not insight:
            raise ApplicationError("AI insight could not be computed", type="AiUnavailable")
        await self._tell_crm("insight.updated", key, {"ai_risk_score": insight.get("risk_score"),
                                                      "ai_next_action": (insight.get("next_actions") or [None])[0]})
        return {"risk_score": insight.get("risk_score")}

    async def _deal_risk_action(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        return await self._ai_action(action, key, event, DEAL_RISK)

    async def _transition_action(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        """``opportunity.transition``: the checks and the move of the ``transition`` Update, by ``automation``."""
        req = TransitionRequest(to=action.params["to"], actor=AUTOMATION, reason=action.params.get("reason"))
        async with self._lock:
            unmet = self._unmet(req)
            if unmet:
                reasons = "; ".join(f"{u.code}: {u.message}" for u in unmet)
                raise ApplicationError(f"transition to {req.to!r} refused: {reasons}", type=REFUSED)
            seq = self._move(req)
        return {"from": self._state.history[-1].from_stage, "to": req.to, "transition_seq": seq}

    async def _set_field_action(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        field, value = action.params["field"], action.params.get("value")
        set_path(self._state.opp, field, value)
        self._state.hub_fields[field] = value  # hub-owned from now on: survives the CRM's next update
        self._touch()
        await self._tell_crm("opportunity.updated", key, {"fields": {field: value}, "by": "automation"})
        return {"field": field}

    async def _add_task_action(self, action: PlannedActionModel, key: str, event: dict) -> dict:
        tasks = self._state.opp.setdefault("tasks", [])
        if not any(t.get("key") == key for t in tasks):
            task = {"key": key, **action.params, "created_at": workflow.now().isoformat()}
            tasks.append(task)
            self._touch()
            await self._tell_crm("task.created", key, {"task": task})
        return {"task": key}

    # ---------------------------------------------------------------- transition (Update)

    def _unmet(self, req: TransitionRequest) -> list[Unmet]:
        s = self._state
        ctx = TransitionContext(
            opp=self._rule_opp(),
            stage=s.stage,
            checklist=dict(s.checklist),
            documents=dict(s.documents),
            actor=req.actor.model_dump(),
        )
        unmet = self._compiled.check_transition(ctx, req.to)
        if s.closed is not None:
            unmet.append(Unmet(code="closed", field="stage", message=f"the opportunity is closed {s.closed['outcome']}"))
        return unmet

    @workflow.update
    async def transition(self, req: TransitionRequest) -> OpportunityState:
        """Move to ``req.to``; answers the new state, or fails with every unmet requirement."""
        async with self._lock:
            unmet = self._unmet(req)  # re-checked: an earlier Update may have moved the stage since validation
            if unmet:
                raise _refusal(REFUSED, f"transition to {req.to!r} refused", unmet)
            self._move(req)
            return self._answer()

    def _answer(self) -> OpportunityState:
        """The state as an Update answers it: the pinned pipeline without its spec, which the API has (a pinned
        version never changes) — a third less of every answer's bytes in history, encrypted and sent."""
        s = self._state
        return s.model_copy(update={"pipeline": s.pipeline.model_copy(update={"spec": {}})})

    def _move(self, req: TransitionRequest) -> int:
        """Record an accepted transition and queue its effects; returns its sequence number."""
        s = self._state
        now = workflow.now()
        seq = self._queue("transition", {"from": s.stage, "to": req.to})
        s.history.append(
            TransitionRecord(
                seq=seq, from_stage=s.stage, to_stage=req.to, actor=req.actor, at=now,
                pipeline_version=s.pipeline.version, reason=req.reason,
            )
        )  # fmt: skip
        s.visits[-1].exited_at = now
        s.visits.append(StageVisit(stage=req.to, entered_at=now))
        s.stage = req.to
        self._active()
        return seq

    @transition.validator
    def _validate_transition(self, req: TransitionRequest) -> None:
        unmet = self._unmet(req)
        if unmet:
            raise _refusal(REFUSED, f"transition to {req.to!r} refused", unmet)

    # ---------------------------------------------------------------- retrying a rule action

    async def _retry(self, input: RetryActionInput) -> None:
        outcome = await retry_and_record(self._rules, input, self._rule_event("retry", {"run": input.run_key}))
        for run in self._state.rule_runs:
            if run.key == input.run_key and input.index < len(run.actions):
                attempts = run.actions[input.index].attempts + 1
                run.actions[input.index] = outcome.model_copy(update={"attempts": attempts})
        self._touch()

    @workflow.update
    async def retry_action(self, input: RetryActionInput) -> int:
        """Queue one recorded rule action to run again under its key; answers the effect's sequence number."""
        return self._queue("retry", input.model_dump(mode="json"))

    # ---------------------------------------------------------------- other updates, signals, query

    def _registered_by(self, req: UpsertRequest) -> bool:
        """Whether ``req`` is the PUT whose Update-with-Start started this workflow (answered with the state)."""
        return req.registration is not None and req.registration == self._registration

    @workflow.update
    async def upsert(self, req: UpsertRequest) -> OpportunityState:
        """A changed body from the CRM: update the fields and fire ``opportunity.updated`` rules.

        The PUT that started the workflow gets the new state."""
        async with self._lock:
            s = self._state
            if self._registered_by(req):
                return self._answer()
            if req.body_hash == s.body_hash:
                raise ApplicationError("unchanged", type=UNCHANGED, non_retryable=True)
            changed = sorted(k for k in set(s.opp) | set(req.opp) if s.opp.get(k) != req.opp.get(k))
            close_date = s.opp.get("close_date")
            keep = {k: s.opp[k] for k in ("tasks",) if k in s.opp}  # hub-owned fields survive a CRM update
            s.opp, s.body_hash = {**req.opp, **keep}, req.body_hash
            conflicts = sorted(p for p, v in s.hub_fields.items() if get_path(s.opp, p, v) != v)
            for path, value in s.hub_fields.items():  # fields rules set stay the hub's (README: merge policy)
                set_path(s.opp, path, value)
            if s.opp.get("close_date") != close_date:  # a new close date: its reminders are armed again
                s.date_fired = {k: v for k, v in s.date_fired.items() if not k.startswith(CLOSE_DATE_APPROACHING)}
            self._active()  # (re-arms the timers)
            self._queue("updated", {"changed": changed, **({"conflicts": conflicts} if conflicts else {})})
            return self._answer()

    @upsert.validator
    def _validate_upsert(self, req: UpsertRequest) -> None:
        if req.body_hash == self._state.body_hash and not self._registered_by(req):
            raise ApplicationError("unchanged", type=UNCHANGED, non_retryable=True)

    def _unknown_items(self, req: ChecklistRequest) -> list[Unmet]:
        known = {i for st in self._state.pipeline.spec.get("spec", {}).get("stages", []) for i in st.get("checklist", [])}
        return [
            Unmet(code="unknown_item", field=f"items.{i}", message=f"{i!r} is on no checklist of this pipeline")
            for i in sorted(set(req.items) - known)
        ]

    @workflow.update
    async def set_checklist(self, req: ChecklistRequest) -> OpportunityState:
        """Mark checklist items done or undone."""
        async with self._lock:
            unknown = self._unknown_items(req)
            if unknown:
                raise _refusal(INVALID, "unknown checklist items", unknown)
            s = self._state
            if any(s.checklist.get(k) != v for k, v in req.items.items()):
                s.checklist.update(req.items)
                self._active()
                self._queue("project")
            return self._answer()

    @set_checklist.validator
    def _validate_checklist(self, req: ChecklistRequest) -> None:
        unknown = self._unknown_items(req)
        if unknown:
            raise _refusal(INVALID, "unknown checklist items", unknown)

    def _migration_problems(self, req: MigrateRequest) -> tuple[str, list[Unmet]] | None:
        s = self._state
        if req.pipeline.name != s.pipeline.name or req.pipeline.version <= s.pipeline.version:
            return UNCHANGED, []
        keys = {st["key"] for st in req.pipeline.spec.get("spec", {}).get("stages", [])}
        if s.stage not in keys:
            return MIGRATION_REFUSED, [
                Unmet(
                    code="stage_missing",
                    field="stage",
                    message=f"stage {s.stage!r} does not exist in {req.pipeline.name} v{req.pipeline.version}",
                )
            ]
        return None

    @workflow.update
    async def migrate_pipeline(self, req: MigrateRequest) -> OpportunityState:
        """Re-pin to a newer version of the same pipeline (refused if the current stage is gone)."""
        async with self._lock:
            problem = self._migration_problems(req)
            if problem:
                raise _refusal(problem[0], "pipeline migration not done", problem[1])
            self._state.pipeline = req.pipeline
            self._compiled = compile_pipeline(req.pipeline.spec)
            self._queue("project")
            return self._answer()

    @migrate_pipeline.validator
    def _validate_migration(self, req: MigrateRequest) -> None:
        problem = self._migration_problems(req)
        if problem:
            raise _refusal(problem[0], "pipeline migration not done", problem[1])

    @workflow.signal
    def domain_event(self, event: DomainEvent) -> None:
        """A domain event about this opportunity (a redelivery of the same event is ignored)."""
        s = self._state
        # one delivery may carry several events (e.g. two Slack buttons): the content is part of the identity
        source_id = f"{event.source.provider}:{event.source.event_id}:{event.type}:{body_hash(event.data)[:16]}"
        if source_id in s.seen_events:
            return
        s.seen_events = (s.seen_events + [source_id])[-MAX_SEEN_EVENTS:]
        now = workflow.now()
        data = event.data
        if event.type == "document.changed" and data.get("document"):
            s.documents[data["document"]] = bool(data.get("present", True))
        elif event.type == "contract.signed":
            s.documents[data.get("document") or "signed_contract"] = True
        elif event.type == "slack.action" and isinstance(data.get("approval"), dict):
            approval = data["approval"]
            s.approvals[str(approval.get("request") or data.get("action_id") or "approval")] = {
                "decision": approval.get("decision"),
                "by": approval.get("by"),
                "at": now.isoformat(),
            }
        record = {"type": event.type, "data": data, "source": event.source.model_dump(), "at": now.isoformat()}
        s.events = (s.events + [record])[-MAX_EVENTS:]
        self._active()
        self._queue("event", record)

    @workflow.signal(name=DATE_RULES_SIGNAL)
    def date_rules(self, rules: DateRules) -> None:
        """The org's relative-date rules changed (sent by the rules API): arm the timers for these."""
        self._set_date_rules(rules)

    def _set_date_rules(self, rules: DateRules) -> None:
        """Arm the timers for ``rules``, unless the ones known were read later (a preparation that read the rules
        before a change may finish after the change's signal)."""
        old = self._state.date_rules
        if rules.newer_than(old):
            self._state.date_rules = rules
            if old is None or (old.days, old.day_seconds) != (rules.days, rules.day_seconds):
                self._rearm = True

    @workflow.query
    def state(self) -> OpportunityState:
        """The whole current state."""
        return self._state

    @workflow.query
    def check_transition(self, req: TransitionRequest) -> list[Unmet]:
        """Every requirement a move to ``req.to`` by ``req.actor`` still misses (empty: it would be accepted)."""
        return self._unmet(req)

    def _close_problems(self, req: CloseRequest) -> list[Unmet]:
        problems = []
        if req.outcome is None and not req.archive:
            problems.append(Unmet(code="nothing_to_do", field="outcome", message="give an outcome, archive, or both"))
        if req.outcome == "lost" and not (req.reason or "").strip():
            problems.append(Unmet(code="reason_missing", field="reason", message="closing lost needs a reason"))
        if req.outcome is not None and self._state.closed is not None:
            problems.append(Unmet(code="already_closed", field="outcome",
                                  message=f"already closed {self._state.closed.get('outcome')}"))
        return problems

    @workflow.update
    async def close(self, req: CloseRequest) -> OpportunityState:
        """Close the opportunity lost with a reason, and/or archive it (it leaves the default lists)."""
        async with self._lock:
            problems = self._close_problems(req)
            if problems:
                raise _refusal(INVALID, "opportunity not closed", problems)
            s = self._state
            if req.outcome is not None:
                s.closed = {"outcome": req.outcome, "reason": req.reason, "actor": req.actor.model_dump(),
                            "at": workflow.now().isoformat()}
            s.archived = s.archived or req.archive
            self._rearm = True  # closed or archived: no more date timers
            self._queue("project")
            return self._answer()

    @close.validator
    def _validate_close(self, req: CloseRequest) -> None:
        problems = self._close_problems(req)
        if problems:
            raise _refusal(INVALID, "opportunity not closed", problems)
