"""Steps of a rule (``spec.do`` items with ``id``, ``when``, ``on_error``, ``attempts``): what they refer to and
how one is prepared to run.

A step with an ``id`` makes its result available to later steps as ``steps.<id>.output.<field>`` (the fields
the action declares, ``rules.actions``) and ``steps.<id>.status`` (``ok``, ``failed`` or ``skipped``), in their
params templates and in their own ``when`` conditions. A step that refers to ``steps`` cannot be rendered when
the rule is planned: it is *deferred* and prepared by the workflow right before it runs, with :func:`prepare`
(pure: no I/O, no clock, so workflow code may call it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from rules.expr import RULE_VARIABLES, EvaluationError, activation, compile_condition
from rules.templating import TemplateProblem, compile_params

#: Variables of a step's own ``when``: those of a rule condition and ``steps``.
STEP_VARIABLES = RULE_VARIABLES | {"steps"}
_REF = re.compile(
    r"(?<![\w.])steps\s*\.\s*([A-Za-z_]\w*)(?:\s*\.\s*([A-Za-z_]\w*)(?:\s*\.\s*([A-Za-z_]\w*))?)?"
)
_WORD = re.compile(r"(?<![\w.])steps\b")


class StepProblem(ValueError):
    """A step that cannot run: its condition failed to evaluate or its params could not be rendered."""


def step_refs(text: str) -> list[tuple[str, str | None, str | None]]:
    """Each ``steps.<id>[.<part>[.<field>]]`` in a template or condition, as (id, part, field)."""
    return [m.groups() for m in _REF.finditer(text)]


def strings(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in params, with its path."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, (*path, i))


def mentions_steps(params: dict[str, Any], when: str | None) -> bool:
    """Whether a step's params or condition refer to earlier steps (then it is prepared at run time)."""
    texts = [when or ""] + [text for _, text in strings(params)]
    return any(_WORD.search(text) for text in texts)


def rule_variables(event: dict[str, Any]) -> dict[str, Any]:
    """The variables of a rule's conditions and templates for an event: missing maps are empty maps."""
    variables = {name: event.get(name) for name in RULE_VARIABLES}
    for key in ("opp", "event", "lead"):
        if variables[key] is None:
            variables[key] = {}
    return variables


def prepare(params: dict[str, Any], when: str | None, variables: dict[str, Any]) -> tuple[dict | None, str | None]:
    """A step's rendered params and None, or None and why it is skipped (its ``when`` is false).

    ``variables``: the rule's variables (``opp``, ``event``, …) and, for a deferred step, ``steps``.
    Raises :class:`StepProblem` when the condition cannot be evaluated or a template not rendered.
    """
    if when is not None:
        try:
            result = compile_condition(when, STEP_VARIABLES).evaluate(activation(variables))
        except EvaluationError as exc:
            raise StepProblem(f"condition error: {exc} in `{when}`") from None
        if not result:
            return None, f"condition false: `{when}`"
    try:
        return compile_params(params).render(variables), None
    except TemplateProblem as exc:
        where = ".".join(str(p) for p in exc.path)
        raise StepProblem(f"{where}: {exc.message}" if where else exc.message) from None
