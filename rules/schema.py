"""JSON Schema of the resource kinds, for editors (e.g. the YAML language server) and the API.

Generated from the pydantic models, plus what the models check in code: the trigger names and,
for ``do`` items, one property per known action with that action's params schema.
"""

from __future__ import annotations

from typing import Any

from rules import actions
from rules.model import KINDS, MODELS, TRIGGERS

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
    return {
        "type": "object",
        "description": "one action: `provider.action: {params}`",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": properties,
        "additionalProperties": False,
    }
