"""The registry of action names a rule may use: the params model of each and where it can run.

Where an action runs follows from what the event names (its *subject*): ``opportunity`` actions need the
event's opportunity (its OpportunityWorkflow does them), ``lead`` actions the event's lead, and ``org``
actions (``http.post``, every provider action) run for any event. ``rules.model.TRIGGER_SUBJECTS`` says
what each trigger's events can name; validation refuses an action that can never run for its trigger, and
:func:`placement` says, for one concrete event, where an action would run or why it cannot.

Built-ins are registered here; provider actions (``slack.post_message``, …) are registered by the
connectors (``connectors.base`` calls :func:`register_action`). Because validation can run in a
process that has not imported the connectors (the CLI, the API), names declared in the provider
catalogue ``connectors/providers.yaml`` (any ``actions:`` list) are known too, with unchecked
params. The catalogue is read as data, on first use, never imported.

Each registered action also declares its *output*: the fields of the dict it returns and their types
(``{"customer_id": str}``). Later steps of a rule use them (``{{ steps.customer.output.customer_id }}``) and
validation checks every such reference against the declaration (``rules.validate``); an action known only
from the catalogue has no declared output, and references to it are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rules.model import HOLDS

CATALOGUE = Path(__file__).resolve().parent.parent / "connectors" / "providers.yaml"


ANYWHERE = frozenset({"opportunity", "lead", "org"})
#: What each subject means, for messages.
SUBJECT_TEXT = {"opportunity": "an opportunity", "lead": "a lead", "org": "the org"}


#: The fields an action returns and their types (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``, or
#: ``object`` for a value of no fixed type).
Output = dict[str, type]


@dataclass(frozen=True)
class ActionInfo:
    """A known action: its name, params model (``None`` when only declared in the catalogue), the
    subjects it can run for (``runs_on``: ``opportunity``, ``lead``, ``org``; ``org`` means any event) and
    its output fields (``None``: not declared, references to them are not checked)."""

    name: str
    params_model: type[BaseModel] | None
    description: str = ""
    runs_on: frozenset[str] = ANYWHERE
    output: Output | None = None

    def runs_for(self, subjects: frozenset[str]) -> bool:
        """Whether the action can run for an event naming one of ``subjects``."""
        return "org" in self.runs_on or bool(self.runs_on & subjects)

    @property
    def needs(self) -> str:
        """What the action needs, in words (``an opportunity or a lead``)."""
        return " or ".join(SUBJECT_TEXT[s] for s in sorted(self.runs_on))


_REGISTRY: dict[str, ActionInfo] = {}


def register_action(
    name: str,
    params_model: type[BaseModel] | None,
    description: str = "",
    runs_on: frozenset[str] = ANYWHERE,
    output: Output | None = None,
) -> None:
    """Make ``name`` (``provider.action``) usable in rules, its params checked against ``params_model``, the
    fields of its result declared by ``output``."""
    if "." not in name or name.startswith(".") or name.endswith("."):
        raise ValueError(f"action name {name!r} must be '<provider>.<action>'")
    description = description or (params_model.__doc__ or "").strip()
    _REGISTRY[name] = ActionInfo(name, params_model, description, runs_on, output)


_SAMPLES: dict[type, Any] = {str: "text", int: 1, float: 1.0, bool: True, dict: {}, list: []}


def sample_output(output: Output | None) -> dict[str, Any]:
    """Typed sample values of an action's output, to type-check conditions over ``steps`` (fields of no fixed
    type are left out: a missing field is not a type error)."""
    return {k: _SAMPLES[t] for k, t in (output or {}).items() if t in _SAMPLES}


def get_action(name: str) -> ActionInfo | None:
    """The registered action, else one declared in the provider catalogue, else ``None``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in catalogue_actions(CATALOGUE):
        return ActionInfo(name, None, "declared in connectors/providers.yaml")
    return None


def event_subjects(event: dict[str, Any]) -> frozenset[str]:
    """What a rule event names: its opportunity (``opp``), its lead (``lead``), and always the org."""
    found = {"org"}
    if event.get("opp"):
        found.add("opportunity")
    if event.get("lead"):
        found.add("lead")
    return frozenset(found)


def placement(name: str, event: dict[str, Any]) -> tuple[str, str | None]:
    """Where action ``name`` runs for ``event`` (``opportunity``, ``lead`` or ``org``) and, if it cannot,
    why (else None). The workflows and the dry-run use this one answer."""
    if name in HOLDS:  # a wait or an approval: the run's own RuleRunWorkflow holds it
        return "org", None
    info = get_action(name)
    if info is None:
        return "org", f"unknown action {name!r}"
    subjects = event_subjects(event)
    for subject in ("org", "opportunity", "lead"):
        if subject in info.runs_on and subject in subjects:
            return subject, None
    return sorted(info.runs_on)[0], f"{name} needs {info.needs}; this {event.get('type')} event names none"


def known_actions() -> list[str]:
    """Every action name a rule may use, sorted."""
    return sorted(set(_REGISTRY) | catalogue_actions(CATALOGUE))


@lru_cache(maxsize=4)
def catalogue_actions(path: Path) -> frozenset[str]:
    """Action names listed under any ``actions:`` key of the provider catalogue (empty if absent)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return frozenset()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "actions":
                    found.update(_action_names(value))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return frozenset(found)


def _action_names(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {k for k in value if isinstance(k, str)}
    if isinstance(value, list):
        names = {v for v in value if isinstance(v, str)}
        names |= {v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str)}
        return names
    return set()


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetField(_Params):
    """Set one field of the opportunity (dotted path, e.g. ``forecast_category``)."""

    field: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    value: Any


class AddTask(_Params):
    """Add a task to the opportunity."""

    title: str = Field(min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=5000)
    assignee: str | None = None
    due_in_days: int | None = Field(default=None, ge=0, le=3650)


class NextAction(_Params):
    """Recompute the AI risk score and next best actions of the opportunity (or, for a lead, score it and
    say what to do next)."""

    reason: str | None = None


class ScoreLead(_Params):
    """Score the lead of the event with the AI lead model."""

    lead_id: str | None = Field(default=None, description="default: the event's lead")


class HttpPost(_Params):
    """POST JSON to an outside URL (private, loopback, link-local and metadata addresses are refused)."""

    url: str = Field(min_length=1, max_length=2000)
    json_body: dict[str, Any] | list[Any] | None = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0, le=30)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DealRisk(_Params):
    """Recompute the opportunity's AI risk score and factors (no next actions, never OpenAI)."""

    reason: str | None = None


class Transition(_Params):
    """Move the opportunity to another stage, as actor ``automation``, through the same checks as a person's
    transition; a refusal fails the action with every unmet requirement."""

    to: str = Field(min_length=1, max_length=100)
    reason: str | None = Field(default=None, max_length=500)


_OPPORTUNITY = frozenset({"opportunity"})
_LEAD_SCORE: Output = {"lead_id": str, "score": float, "low": float, "high": float, "factors": list,
                       "model_version": str, "source": str}  # fmt: skip
for _name, _model, _runs_on, _output in (
    ("opportunity.set_field", SetField, _OPPORTUNITY, {"field": str}),
    ("opportunity.add_task", AddTask, _OPPORTUNITY, {"task": str}),
    ("opportunity.transition", Transition, _OPPORTUNITY, {"from": str, "to": str, "transition_seq": int}),
    # an opportunity's: risk_score; a lead's: lead_id, score, next_action
    ("ai.next_action", NextAction, frozenset({"opportunity", "lead"}),
     {"risk_score": float, "lead_id": str, "score": float, "next_action": str}),
    ("ai.deal_risk", DealRisk, _OPPORTUNITY, {"risk_score": float}),
    ("ai.score_lead", ScoreLead, frozenset({"lead"}), _LEAD_SCORE),
    ("http.post", HttpPost, ANYWHERE, {"status": int, "body": object}),
):
    register_action(_name, _model, runs_on=_runs_on, output=_output)
