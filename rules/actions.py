"""The registry of action names a rule may use, with the params model of each.

Built-ins are registered here; provider actions (``slack.post_message``, …) are registered by the
connectors (``connectors.base`` calls :func:`register_action`). Because validation can run in a
process that has not imported the connectors (the CLI, the API), names declared in the provider
catalogue ``connectors/providers.yaml`` (any ``actions:`` list) are known too, with unchecked
params. The catalogue is read as data, on first use, never imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

CATALOGUE = Path(__file__).resolve().parent.parent / "connectors" / "providers.yaml"


@dataclass(frozen=True)
class ActionInfo:
    """A known action: its name and params model (``None`` when only declared in the catalogue)."""

    name: str
    params_model: type[BaseModel] | None
    description: str = ""


_REGISTRY: dict[str, ActionInfo] = {}


def register_action(name: str, params_model: type[BaseModel] | None, description: str = "") -> None:
    """Make ``name`` (``provider.action``) usable in rules, its params checked against ``params_model``."""
    if "." not in name or name.startswith(".") or name.endswith("."):
        raise ValueError(f"action name {name!r} must be '<provider>.<action>'")
    _REGISTRY[name] = ActionInfo(name, params_model, description or (params_model.__doc__ or "").strip())


def get_action(name: str) -> ActionInfo | None:
    """The registered action, else one declared in the provider catalogue, else ``None``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in catalogue_actions(CATALOGUE):
        return ActionInfo(name, None, "declared in connectors/providers.yaml")
    return None


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
    """Recompute the AI risk score and next best actions of the opportunity."""

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


for _name, _model in {
    "opportunity.set_field": SetField,
    "opportunity.add_task": AddTask,
    "ai.next_action": NextAction,
    "ai.score_lead": ScoreLead,
    "http.post": HttpPost,
}.items():
    register_action(_name, _model)
