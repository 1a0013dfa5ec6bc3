"""Schemas of the two resource kinds, ``Pipeline`` and ``Rule`` (``apiVersion: fulqrun.io/v1``).

These models check shape and types only (unknown fields and wrong types are errors); the
meaning (stage keys unique, transitions to defined stages, CEL, templates, known actions) is
checked by ``rules.validate``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSION = "fulqrun.io/v1"
KINDS = ("Pipeline", "Rule")
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
SCOPE_PATTERN = r"^(\*|[A-Za-z0-9][-A-Za-z0-9_.]{0,63})$"

#: Events a rule may be triggered by: opportunity lifecycle, leads, domain events mapped from
#: webhooks (see ``connectors.events``), ``schedule`` (cron, in ``spec.schedule``), and the relative-date
#: triggers raised by the opportunity's own durable timers (see ``DATE_TRIGGERS``).
TRIGGERS = (
    "opportunity.created",
    "opportunity.updated",
    "opportunity.close_date_approaching",
    "opportunity.stale",
    "stage.entered",
    "stage.exited",
    "lead.created",
    "payment.received",
    "payment.failed",
    "contract.sent",
    "contract.signed",
    "contract.declined",
    "call.recorded",
    "slack.action",
    "document.changed",
    "subscription.canceled",
    "connection.failed",
    "automation.failed",
    "schedule",
)
STAGE_TRIGGERS = ("stage.entered", "stage.exited")
#: Relative-date triggers and the spec field holding their number of days (``days_before: 7``: seven days
#: before the close date; ``days: 14``: no activity for fourteen days).
DATE_TRIGGERS = {"opportunity.close_date_approaching": "days_before", "opportunity.stale": "days"}
MAX_DAYS = 3650

_OPP, _ORG = frozenset({"opportunity"}), frozenset({"org"})
_WEBHOOK = frozenset({"opportunity", "org"})  # mapped provider events name an opportunity when they can
#: What the events of each trigger can name (see ``rules.actions``): an ``opportunity`` (the rule runs in its
#: workflow), a ``lead``, or only the ``org``. An action that can run for none of them is refused.
TRIGGER_SUBJECTS: dict[str, frozenset[str]] = {
    "opportunity.created": _OPP,
    "opportunity.updated": _OPP,
    "opportunity.close_date_approaching": _OPP,
    "opportunity.stale": _OPP,
    "stage.entered": _OPP,
    "stage.exited": _OPP,
    "lead.created": frozenset({"lead"}),
    "payment.received": _WEBHOOK,
    "payment.failed": _WEBHOOK,
    "contract.sent": _WEBHOOK,
    "contract.signed": _WEBHOOK,
    "contract.declined": _WEBHOOK,
    "call.recorded": _WEBHOOK,
    "slack.action": _WEBHOOK,
    "document.changed": _WEBHOOK,
    "subscription.canceled": _WEBHOOK,
    "connection.failed": _ORG,
    "automation.failed": _WEBHOOK,
    "schedule": _ORG,
}

ScopeItem = Annotated[str, Field(pattern=SCOPE_PATTERN)]
StageKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
ItemKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="identifier usable in CEL")]


class _Strict(BaseModel):
    """Unknown fields are errors; values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class Metadata(_Strict):
    """Identity and scope of a resource."""

    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits and '-', at most 63")
    org: str | None = Field(default=None, description="the org; filled in from the API key when applying")
    branches: list[ScopeItem] = Field(default_factory=lambda: ["*"], min_length=1)
    roles: list[ScopeItem] = Field(default_factory=lambda: ["*"], min_length=1)
    description: str | None = Field(default=None, max_length=2000)
    labels: dict[str, str] = Field(default_factory=dict)


class Template(_Strict):
    """A document template copied into the stage's folders when an opportunity enters the stage."""

    source: str = Field(
        min_length=1, max_length=1000, description="path of the template in the template library"
    )
    target: str = Field(min_length=1, max_length=1000, description="destination path; may use {{ opp.* }}")


class Stage(_Strict):
    """One stage of a pipeline."""

    key: StageKey
    name: str = Field(min_length=1, max_length=100)
    color: str = Field(pattern=r"^#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})$", description="hex color, e.g. #2563EB")
    probability: float = Field(ge=0.0, le=1.0, description="win probability in [0, 1]")
    order: int | None = Field(default=None, ge=0, description="display order; default: position in the list")
    description: str | None = Field(default=None, max_length=2000)
    checklist: list[ItemKey] = Field(default_factory=list)
    documents: list[ItemKey] = Field(
        default_factory=list, description="documents required to leave the stage"
    )
    folders: list[Annotated[str, Field(min_length=1, max_length=400)]] = Field(
        default_factory=list, description="SharePoint folders provisioned on entering the stage"
    )
    templates: list[Template] = Field(default_factory=list)


class Transition(_Strict):
    """An allowed move between two stages and what it requires."""

    from_: str = Field(alias="from", description="stage key, or '*' for any stage")
    to: str
    when: str | None = Field(
        default=None, description="CEL entry criteria over opp, checklist, documents, actor"
    )
    message: str | None = Field(default=None, max_length=500, description="shown when `when` is false")
    roles: list[ScopeItem] = Field(
        default_factory=lambda: ["*"], min_length=1, description="actor roles allowed"
    )
    require_checklist: bool = Field(
        default=True, description="every checklist item of the stage left is done"
    )
    require_documents: bool = Field(default=True, description="every document of the stage left is present")


class PipelineSpec(_Strict):
    """Stages and transitions."""

    initial: str | None = Field(default=None, description="stage of a new opportunity; default: first stage")
    stages: list[Stage] = Field(min_length=1, max_length=50)
    transitions: list[Transition] = Field(default_factory=list, max_length=500)


Params = dict[str, Any]

#: Keys a ``do`` item may carry besides its action (see ``RuleSpec.steps``); an action name has a dot. A
#: ``wait`` item (``wait: {for: 3d}`` or ``wait: {until: <CEL timestamp>}``, optionally ``unless: <CEL>``) has no
#: action, nor has an ``approval`` item (``approval: {channel, approvers, timeout, text}``: Slack buttons).
STEP_KEYS = ("id", "when", "on_error", "attempts", "wait", "unless", "approval")
WAIT = "wait"
APPROVAL = "approval"
#: Steps that hold a run (in its RuleRunWorkflow) until time passes or someone answers.
HOLDS = (WAIT, APPROVAL)
#: What a failed step does to the rest of its run: ``continue`` (the default: later steps run), ``stop`` (later
#: steps are skipped), ``retry`` (run it again, up to ``attempts`` runs in all, then stop).
ON_ERROR = ("continue", "stop", "retry")


@dataclass(frozen=True)
class Step:
    """One item of ``spec.do``: its action and params, and how it runs (``id`` names its output for later
    steps, ``when`` is its own CEL condition, ``on_error`` and ``attempts`` what a failure does)."""

    action: str
    params: Params
    id: str | None = None
    when: str | None = None
    on_error: str = "continue"
    attempts: int = 1
    unless: str | None = None

    @property
    def plain(self) -> bool:
        """Only an action: the rule runs it as rules without steps do."""
        return self.id is None and self.when is None and self.on_error == "continue" and self.action not in HOLDS


class RuleSpec(_Strict):
    """When something happens and a condition holds, do these actions."""

    on: str = Field(description="trigger: " + ", ".join(TRIGGERS))
    stage: str | None = Field(default=None, description="for stage.entered / stage.exited: the stage key")
    schedule: str | None = Field(
        default=None, description="for on: schedule, a 5-field cron expression (UTC) or '@every 15m'"
    )
    days_before: int | None = Field(
        default=None, ge=1, le=MAX_DAYS,
        description="for on: opportunity.close_date_approaching, fire this many days before the close date",
    )
    days: int | None = Field(
        default=None, ge=1, le=MAX_DAYS, description="for on: opportunity.stale, fire after this many days without activity"
    )
    when: str | None = Field(
        default=None, description="CEL condition over opp, event, stage, org, branch, role"
    )
    do: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=50,
        description="steps, each a map with one action `provider.action: {params}` and optionally "
        + ", ".join(STEP_KEYS),
    )
    enabled: bool = True
    description: str | None = Field(default=None, max_length=2000)

    @field_validator("do")
    @classmethod
    def _one_action_each(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, item in enumerate(value):
            names = [k for k in item if k not in STEP_KEYS]
            holds = [k for k in HOLDS if k in item]
            if holds:
                if names or len(holds) > 1:
                    raise ValueError(f"do[{i}] is a {holds[0]}: it cannot also have {', '.join([*holds[1:], *names])}")
                continue
            if len(names) != 1:
                raise ValueError(
                    f"do[{i}] must have exactly one action key `provider.action: {{params}}` (besides "
                    f"{', '.join(STEP_KEYS)}), got {len(names)}"
                )
            if not isinstance(item[names[0]], dict | None):
                raise ValueError(f"do[{i}].{names[0]}: params must be a mapping or empty")
        return value

    def steps(self) -> list[Step]:
        """The ``do`` items as steps (step keys of the wrong type are reported by ``rules.validate``)."""
        out = []
        for item in self.do:
            name = next((k for k in HOLDS if k in item), None) or next(k for k in item if k not in STEP_KEYS)
            out.append(Step(name, item[name] or {}, item.get("id"), item.get("when"),
                            item.get("on_error", "continue"), item.get("attempts", 1), item.get("unless")))  # fmt: skip
        return out

    @property
    def date_days(self) -> int | None:
        """The days of a relative-date trigger (``days_before`` or ``days``), None for other triggers."""
        field = DATE_TRIGGERS.get(self.on)
        return getattr(self, field) if field else None

    def actions(self) -> list[tuple[str, Params]]:
        """The actions as (name, params) pairs, params ``{}`` when absent."""
        return [(step.action, step.params) for step in self.steps()]


class Pipeline(_Strict):
    """A pipeline resource."""

    api_version: Literal["fulqrun.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Pipeline"]
    metadata: Metadata
    spec: PipelineSpec


class Rule(_Strict):
    """An automation rule resource."""

    api_version: Literal["fulqrun.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Rule"]
    metadata: Metadata
    spec: RuleSpec


Resource = Pipeline | Rule
MODELS: dict[str, type[Pipeline] | type[Rule]] = {"Pipeline": Pipeline, "Rule": Rule}


def dump(resource: Resource) -> dict:
    """The canonical document of a resource (aliases, no unset optionals), as stored and hashed."""
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def content_hash(document: dict) -> str:
    """SHA-256 of the canonical JSON of a document (sorted keys, no whitespace)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
