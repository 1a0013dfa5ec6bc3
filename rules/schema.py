"""JSON Schema of the resource kinds, for editors (e.g. the YAML language server) and the API.

Generated from the pydantic models, plus what the models check in code: the trigger names and,
for ``do`` items, one property per known action with that action's params schema and the step keys
(``id``, ``when``, ``on_error``, ``attempts``, ``wait``, ``unless``, ``approval``).
"""

from __future__ import annotations

from typing import Any

from rules import actions
from rules.model import HOLDS, KINDS, MODELS, ON_ERROR, STEP_KEYS, TRIGGERS
from rules.validate import MAX_ATTEMPTS

SCHEMA_ID = "https://fulqrun.io/schemas/v1/{kind}.json"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``Pipeline`` or ``Rule``; KeyError for another kind."""
    if kind not in KINDS:
        raise KeyError(kind)
    schema = MODELS[kind].model_json_schema(by_alias=True)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID.format(kind=kind.lower()),
        **schema,
    }
    if kind == "Rule":
        spec = schema["$defs"]["RuleSpec"]["properties"]
        spec["on"]["enum"] = list(TRIGGERS)
        spec["do"]["items"] = _action_items(schema["$defs"])
    return schema


def _action_items(defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name in actions.known_actions():
        info = actions.get_action(name)
        model = info.params_model if info else None
        if model is None:
            properties[name] = {"type": ["object", "null"], "description": info.description if info else ""}
            continue
        params = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(params.pop("$defs", {}))
        properties[name] = {"anyOf": [params, {"type": "null"}], "description": info.description}
    steps = {
        "id": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,62}$",
               "description": "names the step: later steps use steps.<id>.output.<field> and steps.<id>.status"},
        "when": {"type": "string", "description": "CEL: the step runs only if true (may use steps.<id>)"},
        "on_error": {"enum": list(ON_ERROR), "default": "continue",
                     "description": "a failure: continue (the default), stop the run, or retry then stop"},
        "attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS,
                     "description": "with on_error: retry, how many runs in all"},
        "wait": {"type": "object", "description": "a durable wait: {for: 3d} or {until: <CEL timestamp>}",
                 "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                 "properties": {"for": {"type": "string", "pattern": r"^\d+[smhd]$"},
                                "until": {"type": "string", "description": "CEL timestamp"}}},
        "unless": {"type": "string", "description": "of a wait: CEL re-checked when it ends; true ends the run"},
        "approval": {"type": "object", "description": "Slack Approve/Reject buttons; the run waits for a listed "
                     "approver or the timeout (output: approved, by, timed_out)", "additionalProperties": False,
                     "required": ["channel", "approvers", "timeout"],
                     "properties": {"channel": {"type": "string"}, "text": {"type": "string"},
                                    "approvers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                    "timeout": {"type": "string", "pattern": r"^\d+[smhd]$"}}},
    }  # fmt: skip
    return {
        "type": "object",
        "description": "one step: exactly one action `provider.action: {params}`, a `wait` or an `approval`, with "
        "optional " + ", ".join(k for k in STEP_KEYS if k not in HOLDS)
        + " (exactly one action is checked by validation, not by this schema)",
        "minProperties": 1,
        "properties": {**properties, **steps},
        "additionalProperties": False,
    }
