"""Steps of a rule (``spec.do`` items with ``id``, ``when``, ``on_error``, ``attempts``): what they refer to and
how one is prepared to run.

A step with an ``id`` makes its result available to later steps as ``steps.<id>.output.<field>`` (the fields
the action declares, ``rules.actions``) and ``steps.<id>.status`` (``ok``, ``failed`` or ``skipped``), in their
params templates and in their own ``when`` conditions. A step that refers to ``steps`` cannot be rendered when
the rule is planned: it is *deferred* and prepared by the workflow right before it runs, with :func:`prepare`
(pure: no I/O, no clock, so workflow code may call it).

A ``wait`` step (``wait: {for: 3d}`` or ``wait: {until: <CEL timestamp>}``, optionally ``unless: <CEL>``) has no
action: :func:`wait_deadline` says when it ends (the workflow passes its own clock), :func:`unless_holds`
whether the run ends there (re-checked with the opportunity's current ``opp`` and ``documents``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from rules.expr import (
    RULE_VARIABLES,
    EvaluationError,
    activation,
    compile_condition,
    compile_timestamp,
    evaluate_timestamp,
)
from rules.templating import TemplateProblem, compile_params

#: Variables of a step's own ``when`` and of a wait's ``until``: those of a rule condition and ``steps``.
STEP_VARIABLES = RULE_VARIABLES | {"steps"}
#: Variables of a wait's ``unless``, re-checked when the wait ends: ``opp`` and ``documents`` are then the
#: opportunity's current ones.
UNLESS_VARIABLES = STEP_VARIABLES | {"documents"}
#: What a wait step outputs: when it ended, and whether its ``unless`` held (the rest of the run was skipped).
WAIT_OUTPUT: dict[str, type] = {"until": str, "unless": bool}
#: What an approval step outputs: the decision (``approved`` false when rejected or timed out), who made it (a
#: listed approver's Slack user id; None on timeout), whether it timed out, and when it would have.
APPROVAL_OUTPUT: dict[str, type] = {"approved": bool, "by": str, "timed_out": bool, "until": str}
MAX_WAIT_SECONDS = 366 * 86400
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
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


def duration_seconds(text: Any) -> int | None:
    """The seconds of a wait's ``for`` (``90s``, ``15m``, ``4h``, ``3d``), or None if it is not one."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else None


def wait_deadline(wait: dict[str, Any], variables: dict[str, Any], now: datetime) -> datetime:
    """When a wait step ends: ``now`` plus its ``for`` (an approval's ``timeout``), or its ``until`` evaluated
    (a timestamp in the past ends the wait at once). Raises :class:`StepProblem`."""
    for key in ("for", "timeout"):
        if key in wait:
            seconds = duration_seconds(wait[key])
            if seconds is None:
                raise StepProblem(f"{key}: not a duration: {wait[key]!r}")
            return now + timedelta(seconds=seconds)
    try:
        at = evaluate_timestamp(compile_timestamp(wait["until"], STEP_VARIABLES), variables)
    except EvaluationError as exc:
        raise StepProblem(f"wait.until: {exc} in `{wait['until']}`") from None
    return at.astimezone(UTC)


def unless_holds(source: str, variables: dict[str, Any]) -> bool:
    """Whether a wait's ``unless`` holds for these (current) variables. Raises :class:`StepProblem`."""
    try:
        return compile_condition(source, UNLESS_VARIABLES).evaluate(activation(variables))
    except EvaluationError as exc:
        raise StepProblem(f"unless: {exc} in `{source}`") from None
