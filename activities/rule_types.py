"""Inputs and outputs of the rule activities (``rules.plan``, ``rules.record_runs``) and rule-run records.

Shared by every workflow that runs rules through ``workflows.rule_runner``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class RulePlanInput(BaseModel):
    """Evaluate the org's current rules against each event (in order)."""

    org_id: str
    events: list[dict]


class StepControl(BaseModel):
    """How a step of a rule with steps runs (``rules.steps``): its id, own condition, what a failure does,
    whether its params wait for earlier steps' outputs (``deferred``) and why it is skipped, if it is."""

    id: str | None = None
    when: str | None = None
    on_error: Literal["continue", "stop", "retry"] = "continue"
    attempts: int = 1
    unless: str | None = Field(default=None, description="of a wait step: re-checked when the wait ends")
    deferred: bool = False
    skipped: str | None = None


class PlannedActionModel(BaseModel):
    """One action a fired rule asks for, its params already rendered (unless ``step.deferred``)."""

    name: str
    params: dict = Field(default_factory=dict)
    step: StepControl | None = Field(default=None, description="None: a plain action (a rule without steps)")


class RuleOutcomeModel(BaseModel):
    """What one rule version decided for one event (``event``: its index in the planned events)."""

    event: int = 0
    trigger: str
    rule: str
    version: int
    fired: bool
    reason: str = ""
    actions: list[PlannedActionModel] = Field(default_factory=list)


class RulePlan(BaseModel):
    """Every outcome for the planned events, in event order then rule order."""

    outcomes: list[RuleOutcomeModel] = Field(default_factory=list)
    on_failure: bool = Field(default=False, description="a rule listens to automation.failed")


class ActionOutcome(BaseModel):
    """The result of one executed action: its rendered params, output or error, how many times the hub ran
    it (1, plus one per retry through the API; Temporal's own activity retries are inside one attempt) and
    how long the last attempt took."""

    name: str
    idempotency_key: str
    ok: bool
    error: str | None = None
    output: dict = Field(default_factory=dict)
    params: dict = Field(default_factory=dict)
    attempts: int = 1
    duration_ms: int | None = None
    status: Literal["ok", "failed", "skipped", "waiting", "cancelled"] | None = Field(
        default=None, description="a step's status (None before steps: ok tells)")
    step: str | None = Field(default=None, description="the step's id")
    reason: str | None = Field(default=None, description="why a step was skipped")

    @property
    def failed(self) -> bool:
        """Whether it ran and failed (a skipped step did not fail)."""
        return self.status == "failed" if self.status else not self.ok


class RuleRun(BaseModel):
    """One rule's outcome for one event, with the result of each of its actions."""

    key: str
    trigger: str
    rule: str
    version: int
    fired: bool
    reason: str = ""
    actions: list[ActionOutcome] = Field(default_factory=list)
    at: datetime


class RecordRunsInput(BaseModel):
    """Rule runs to store for a subject (the workflow id that ran them)."""

    org_id: str
    subject: str
    runs: list[RuleRun]


#: The workflow type a rule's Schedule starts (workflows/scheduled_rule.py).
SCHEDULED_RULE_WORKFLOW = "ScheduledRuleWorkflow"


class ScheduledRuleInput(BaseModel):
    """One firing of an ``on: schedule`` rule (the version its Schedule was made for; the current one runs)."""

    org_id: str
    rule: str
    version: int
    schedule: str


class RetryActionInput(BaseModel):
    """Run one recorded action again (``index`` of run ``run_id``) under its original idempotency key."""

    org_id: str
    run_id: int
    run_key: str
    index: int
    action: PlannedActionModel
    idempotency_key: str


class RecordRetryInput(BaseModel):
    """The outcome of a retried action, to store on its run."""

    org_id: str
    run_id: int
    index: int
    outcome: ActionOutcome


class RuleRunInput(BaseModel):
    """The rest of a rule run that reached a wait (``RuleRunWorkflow``, id ``rule-run/{run key}``): the run so far
    (its last action the waiting wait step), the planned steps, where to go on, the outputs of the steps so far."""

    org_id: str
    subject: str
    run: RuleRun
    outcome: RuleOutcomeModel
    event: dict
    index: int = Field(description="the wait step's index in outcome.actions")
    until: datetime
    outputs: dict = Field(default_factory=dict)


class RecheckInput(BaseModel):
    """Re-check a wait's ``unless`` when it ends, against the subject's current opportunity (if it is one)."""

    org_id: str
    subject: str
    unless: str
    event: dict
    outputs: dict = Field(default_factory=dict)


RULE_RUN_PREFIX = "rule-run/"


def rule_run_workflow_id(run_key: str) -> str:
    """The id of the ``RuleRunWorkflow`` that holds a run's waits (derived from the run's key)."""
    return RULE_RUN_PREFIX + run_key


def approval_target(data: dict) -> tuple[str, dict] | None:
    """For a ``slack.action`` event's data: the ``RuleRunWorkflow`` its approval answers (the request is
    ``{workflow id}#{step index}``) and the answer, or None when it answers no rule run."""
    answer = data.get("approval")
    request = str(answer.get("request") or "") if isinstance(answer, dict) else ""
    if not request.startswith(RULE_RUN_PREFIX) or not isinstance(answer, dict):
        return None
    return request.partition("#")[0], answer
