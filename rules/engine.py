"""The rule engine: compile rules once, evaluate an event, get what every rule would do and why.

Pure and deterministic (no I/O, no clock): workflows call it directly, and the dry-run
(``POST /v1/rules:test``, ``fulqrun-hub rules test``) is the same call. A rule that does not
compile is kept as an outcome with its error, so a broken rule never stops the others.

Event shape::

    {"type": "stage.entered", "stage": "acquire", "opp": {...}, "event": {...payload...},
     "org": "acme", "branch": "emea", "role": "ae", "lead": {...}, "schedule": "0 9 * * 1",
     "days": 7}   # relative-date triggers: the rule's days_before / days the timer was armed for
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rules.expr import (
    RULE_VARIABLES,
    Condition,
    activation,
    compile_condition,
    references,
    used_keys,
)
from rules.model import Rule, Step, content_hash
from rules.steps import StepProblem, mentions_steps, prepare, rule_variables
from rules.templating import FlatConstant, ParamsTemplate, TemplateProblem, compile_params
from rules.validate import Issue, ResourceInvalid, format_path, parse_resource


@dataclass(slots=True)
class PlannedAction:
    """An action a fired rule would run, with its params rendered."""

    name: str
    params: dict[str, Any]
    #: for a rule with steps (``rules.steps``): ``id``, ``when``, ``on_error``, ``attempts``, ``unless`` (of a
    #: wait: ``name`` is ``wait``, ``params`` its ``for`` or ``until``), ``deferred`` (params
    #: not rendered yet: the step refers to earlier steps) and ``skipped`` (why it does not run); else None
    step: dict[str, Any] | None = None


@dataclass(slots=True)
class RuleOutcome:
    """What one rule does with one event: fired or not, why, and the actions it plans.

    Read-only: the outcomes of rules that do not listen to an event type are shared between calls.
    """

    rule: str
    version: int
    fired: bool
    reason: str
    actions: list[PlannedAction] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class _Compiled:
    trigger: str
    stage: str | None
    schedule: str | None
    days: int | None  # relative-date triggers: days_before / days
    condition: Condition | None
    actions: tuple[tuple[str, ParamsTemplate], ...]
    org: str | None
    branches: frozenset[str] | None  # None: every branch
    roles: frozenset[str] | None
    enabled: bool
    steps: tuple[Step, ...] | None = None  # None: every step is a plain action


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """One rule of a RuleSet: its name and version, and either its compiled form or its error."""

    name: str
    version: int
    compiled: _Compiled | None
    error: str | None = None


_CACHE: OrderedDict[str, _Compiled] = OrderedDict()
_CACHE_SIZE = 4096


def _compile_one(document: dict[str, Any]) -> _Compiled:
    digest = content_hash(document)
    cached = _CACHE.get(digest)
    if cached is not None:
        return cached
    resource = parse_resource(document, registry=False)
    if not isinstance(resource, Rule):
        raise ResourceInvalid([Issue(("kind",), f"expected kind 'Rule', got {resource.kind!r}")])
    spec, meta = resource.spec, resource.metadata
    steps = spec.steps()
    compiled = _Compiled(
        trigger=spec.on,
        stage=spec.stage,
        schedule=spec.schedule,
        days=spec.date_days,
        condition=compile_condition(spec.when, RULE_VARIABLES) if spec.when else None,
        actions=tuple((name, compile_params(params)) for name, params in spec.actions()),
        org=meta.org,
        branches=None if "*" in meta.branches else frozenset(meta.branches),
        roles=None if "*" in meta.roles else frozenset(meta.roles),
        enabled=spec.enabled,
        steps=None if all(step.plain for step in steps) else tuple(steps),
    )
    _CACHE[digest] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def _document_of(item: Any) -> tuple[str, int, dict[str, Any]]:
    """(name, version, document) of one input: a document with ``version``, or ``{name, version, spec}``."""
    if not isinstance(item, dict):  # a ResourceVersion-like object
        item = {"name": item.name, "version": item.version, "spec": item.spec}
    version = int(item.get("version") or 0)
    if "spec" in item and "kind" not in item:
        document = item["spec"]
        if "kind" not in document:  # a bare rule spec
            name = item.get("name") or "rule"
            document = {
                "apiVersion": "fulqrun.io/v1",
                "kind": "Rule",
                "metadata": {"name": name},
                "spec": document,
            }
    else:
        document = {k: v for k, v in item.items() if k not in ("version", "name")}
    name = item.get("name") or (document.get("metadata") or {}).get("name") or "?"
    return str(name), version, document


def dry_run(items: list[Any], event: dict[str, Any]) -> list[RuleOutcome]:
    """Compile ``items`` (as ``compile_rules``) and evaluate ``event``: the dry-run, as one picklable call."""
    return compile_rules(items).evaluate(event)


def compile_rules(items: list[Any]) -> RuleSet:
    """Compile rules; each item is a Rule document plus ``version`` (or ``{name, version, spec}``).

    Never raises for a bad rule: it is kept with its error and reported by every ``evaluate``.
    Stored versions (objects with ``name``, ``version`` and ``content_hash``, e.g. ``ResourceVersion``)
    are recognised by their hashes: the same set of versions gives back the same compiled RuleSet.
    """
    key = _versions_key(items)
    if key is not None and key in _RULESETS:
        _RULESETS.move_to_end(key)
        return _RULESETS[key]
    compiled: list[CompiledRule] = []
    for item in items:
        name, version = "?", 0
        try:
            name, version, document = _document_of(item)
            compiled.append(CompiledRule(name, version, _compile_one(document)))
        except ResourceInvalid as exc:
            reasons = "; ".join(f"{format_path(i.path)}: {i.message}" for i in exc.issues)
            compiled.append(CompiledRule(name, version, None, reasons or "invalid rule"))
        except Exception as exc:  # noqa: BLE001 - a bad rule must never stop the others
            compiled.append(CompiledRule(name, version, None, f"{type(exc).__name__}: {exc}"))
    ruleset = RuleSet(compiled)
    if key is not None:
        _RULESETS[key] = ruleset
        if len(_RULESETS) > _RULESETS_SIZE:
            _RULESETS.popitem(last=False)
    return ruleset


_RULESETS: OrderedDict[tuple, RuleSet] = OrderedDict()
_RULESETS_SIZE = 64


def _versions_key(items: list[Any]) -> tuple | None:
    if not items or any(isinstance(i, dict) or not getattr(i, "content_hash", None) for i in items):
        return None
    return tuple((i.name, i.version, i.content_hash) for i in items)


@dataclass(frozen=True, eq=False)
class _Candidate:
    """A rule listening to one trigger, with everything the hot loop needs precomputed."""

    index: int
    name: str
    version: int
    compiled: _Compiled
    checks: bool  # scope, schedule, days or stage to check
    program: Any
    false_reason: str
    true_reason: str
    flat: tuple[tuple[str, dict[str, Any]], ...] | None  # all params constant scalars: copied, not rendered


@dataclass(frozen=True, eq=False)
class _Plan:
    """What ``evaluate`` does for one event type: the fixed outcomes and the rules to check."""

    base: list[RuleOutcome]
    candidates: list[_Candidate]
    projections: dict[str, frozenset[str] | None]  # CEL variables needed: name -> keys used (None: all)


class RuleSet:
    """Compiled rules, indexed by trigger."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        self.rules = sorted(rules, key=lambda r: (r.name, r.version))
        self.errors = {r.name: r.error for r in self.rules if r.error}
        self.triggers = frozenset(r.compiled.trigger for r in self.rules if r.compiled and r.compiled.enabled)
        self._plans: dict[str, _Plan] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def _plan(self, event_type: str) -> _Plan:
        plan = self._plans.get(event_type)
        if plan is not None:
            return plan
        base: list[RuleOutcome] = []
        candidates: list[_Candidate] = []
        sources: list[str] = []
        for i, rule in enumerate(self.rules):
            c = rule.compiled
            if c is None:
                base.append(RuleOutcome(rule.name, rule.version, False, f"invalid rule: {rule.error}"))
            elif not c.enabled:
                base.append(RuleOutcome(rule.name, rule.version, False, "disabled"))
            elif c.trigger != event_type:
                base.append(
                    RuleOutcome(
                        rule.name,
                        rule.version,
                        False,
                        f"trigger mismatch: rule runs on {c.trigger!r}, event is {event_type!r}",
                    )
                )
            else:
                base.append(RuleOutcome(rule.name, rule.version, False, ""))
                source = c.condition.source if c.condition else ""
                if source:
                    sources.append(source)
                candidates.append(
                    _Candidate(
                        i,
                        rule.name,
                        rule.version,
                        c,
                        checks=c.org is not None
                        or c.branches is not None
                        or c.roles is not None
                        or c.schedule is not None
                        or c.days is not None
                        or c.stage is not None,
                        program=c.condition.program if c.condition else None,
                        false_reason=f"condition false: `{source}`",
                        true_reason=f"condition true: `{source}`" if source else "no condition",
                        flat=tuple((n, t.tree) for n, t in c.actions)
                        if c.steps is None and all(isinstance(t, FlatConstant) for _, t in c.actions)
                        else None,
                    )
                )
        projections = {
            name: used_keys(sources, name)
            for name in RULE_VARIABLES
            if any(references(source, name) for source in sources)
        }
        plan = self._plans[event_type] = _Plan(base, candidates, projections)
        return plan

    def evaluate(self, event: dict[str, Any]) -> list[RuleOutcome]:
        """One outcome per rule (sorted by name): fired with rendered actions, or not and why."""
        plan = self._plan(str(event.get("type", "")))
        outcomes = list(plan.base)
        for index, outcome in self._run(plan, event, keep_all=True):
            outcomes[index] = outcome
        return outcomes

    def fired(self, event: dict[str, Any]) -> list[RuleOutcome]:
        """Only the outcomes of rules that fire (the run-time path: rules of other triggers cost nothing)."""
        return [o for _, o in self._run(self._plan(str(event.get("type", ""))), event, keep_all=False)]

    def _run(self, plan: _Plan, event: dict[str, Any], keep_all: bool) -> list[tuple[int, RuleOutcome]]:
        out: list[tuple[int, RuleOutcome]] = []
        if not plan.candidates:
            return out
        variables: dict[str, Any] | None = None
        context = None
        for cand in plan.candidates:
            reason = self._checks(cand.compiled, event) if cand.checks else None
            if reason is None and cand.program is not None:
                if context is None:
                    context = activation(_project(event, plan.projections))
                try:
                    result = cand.program.execute(context)
                except Exception as exc:  # noqa: BLE001 - the binding raises KeyError/TypeError/RuntimeError...
                    result = exc
                if result is False:
                    reason = cand.false_reason
                elif result is not True:
                    reason = _condition_error(cand.compiled, result)
            if reason is None:
                if cand.flat is not None:
                    planned = [PlannedAction(name, params.copy()) for name, params in cand.flat]
                else:
                    if variables is None:
                        variables = rule_variables(event)
                    try:
                        if cand.compiled.steps is not None:
                            planned = _plan_steps(cand.compiled.steps, variables)
                        else:
                            planned = [PlannedAction(n, t.render(variables)) for n, t in cand.compiled.actions]
                    except TemplateProblem:
                        reason = _template_failure(cand.compiled, variables)
                    except _StepFailed as exc:
                        reason = str(exc)
                if reason is None:
                    out.append(
                        (cand.index, RuleOutcome(cand.name, cand.version, True, cand.true_reason, planned))
                    )
                    continue
            if keep_all:
                out.append((cand.index, RuleOutcome(cand.name, cand.version, False, reason)))
        return out

    @staticmethod
    def _checks(c: _Compiled, event: dict[str, Any]) -> str | None:
        reason = _scope_mismatch(c, event)
        if reason is None and c.schedule is not None and event.get("schedule") not in (None, c.schedule):
            reason = f"schedule mismatch: rule runs on {c.schedule!r}, event is {event.get('schedule')!r}"
        if reason is None and c.days is not None and event.get("days") not in (None, c.days):
            reason = f"days mismatch: rule runs at {c.days} days, event is for {event.get('days')!r}"
        if reason is None and c.stage is not None and c.stage != event.get("stage"):
            reason = f"stage mismatch: rule runs on stage {c.stage!r}, event stage is {event.get('stage')!r}"
        return reason


class _StepFailed(Exception):
    """A step whose condition or params fail when the rule is planned: the rule does not fire."""


def _plan_steps(steps: tuple[Step, ...], variables: dict[str, Any]) -> list[PlannedAction]:
    """The planned steps of a rule with steps: rendered (or skipped, their ``when`` false) now, or deferred
    to run time when they refer to earlier steps (``rules.steps.prepare``)."""
    planned = []
    for j, step in enumerate(steps):
        control: dict[str, Any] = {"id": step.id, "when": step.when, "on_error": step.on_error,
                                   "attempts": step.attempts, "unless": step.unless, "deferred": False, "skipped": None}  # fmt: skip
        if mentions_steps(step.params, step.when):
            planned.append(PlannedAction(step.action, copy.deepcopy(step.params), {**control, "deferred": True}))
            continue
        try:
            params, skipped = prepare(step.params, step.when, variables)
        except StepProblem as exc:
            raise _StepFailed(f"do[{j}] {step.action}: {exc}") from None
        planned.append(PlannedAction(step.action, params or {}, {**control, "skipped": skipped}))
    return planned


def _condition_error(c: _Compiled, result: Any) -> str:
    if isinstance(result, KeyError):
        problem = f"no such field {result.args[0]!r}"
    elif isinstance(result, Exception):
        text = str(result).strip()
        problem = text.splitlines()[0] if text else type(result).__name__
    else:
        problem = f"condition must be a boolean, got {type(result).__name__}"
    return f"condition error: {problem} in `{c.condition.source if c.condition else ''}`"


def _project(event: dict[str, Any], projections: dict[str, frozenset[str] | None]) -> dict[str, Any]:
    """Only the variables (and, for maps, the top-level keys) the conditions use: less to convert to CEL."""
    out: dict[str, Any] = {}
    for name, keys in projections.items():
        value = event.get(name)
        if value is None and name in ("opp", "event", "lead"):
            value = {}
        if keys is not None and isinstance(value, dict):
            value = {k: value[k] for k in keys if k in value}
        out[name] = value
    return out


def _template_failure(c: _Compiled, variables: dict[str, Any]) -> str:
    for j, (name, template) in enumerate(c.actions):
        try:
            template.render(variables)
        except TemplateProblem as exc:
            return f"do[{j}] {name}: {format_path(exc.path)}: {exc.message}"
    return "template error"


def _scope_mismatch(c: _Compiled, event: dict[str, Any]) -> str | None:
    if c.org is not None and event.get("org") not in (None, c.org):
        return f"out of scope: rule belongs to org {c.org!r}, event to {event.get('org')!r}"
    if c.branches is not None and event.get("branch") not in c.branches:
        return f"out of scope: branch {event.get('branch')!r} not in {sorted(c.branches)}"
    if c.roles is not None and event.get("role") not in c.roles:
        return f"out of scope: role {event.get('role')!r} not in {sorted(c.roles)}"
    return None
