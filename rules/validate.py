"""Validation of one resource document: shape (pydantic) and meaning (stages, CEL, templates, actions).

Every problem is an :class:`Issue` with the path of the field it is about; ``rules.loader`` turns
paths into file, line and column. All problems are collected, not just the first.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rules import actions
from rules.expr import (
    RULE_VARIABLES,
    TRANSITION_VARIABLES,
    ExpressionError,
    compile_condition,
    compile_timestamp,
)
from rules.model import (
    APPROVAL,
    DATE_TRIGGERS,
    HOLDS,
    KINDS,
    MODELS,
    NAME_PATTERN,
    ON_ERROR,
    SCOPE_PATTERN,
    STAGE_TRIGGERS,
    TRIGGER_SUBJECTS,
    TRIGGERS,
    WAIT,
    PipelineSpec,
    Resource,
    RuleSpec,
    Step,
)
from rules.steps import (
    APPROVAL_OUTPUT,
    MAX_WAIT_SECONDS,
    STEP_VARIABLES,
    UNLESS_VARIABLES,
    WAIT_OUTPUT,
    duration_seconds,
    step_refs,
    strings,
)
from rules.templating import TemplateProblem, compile_params

Path = tuple[str | int, ...]

MEDDPICC = (
    "metrics",
    "economic_buyer",
    "decision_criteria",
    "decision_process",
    "paper_process",
    "identify_pain",
    "champion",
    "competition",
)
#: The shape of ``opp`` that conditions are type-checked against (the CRM's opportunity document).
SAMPLE_OPP: dict[str, Any] = {
    "id": "opp_1",
    "name": "Sample deal",
    "org": "acme",
    "branch": "emea",
    "owner": {"id": "u_1", "role": "ae", "email": "ae@example.com", "name": "A. E."},
    "amount": 1000.0,
    "currency": "EUR",
    "stage": "prospect",
    "probability": 0.1,
    "close_date": "2030-01-31",
    "meddpicc": dict.fromkeys(MEDDPICC, 0),
    "account": {"id": "acc_1", "name": "Account", "industry": "software", "country": "DE", "employees": 10},
    "contacts": [{"name": "C", "email": "c@example.com", "role": "champion"}],
    "primary_contact": {"name": "C", "email": "c@example.com", "role": "champion"},
    "source": "inbound",
    "fields": {},
}
SAMPLE_LEAD: dict[str, Any] = {
    "id": "lead_1",
    "email": "l@example.com",
    "company": "Co",
    "score": 0.5,
    "fields": {},
}

_PATTERN_TEXT = {
    NAME_PATTERN: "must be lowercase letters, digits and '-' (not at either end), at most 63 characters",
    SCOPE_PATTERN: "must be '*' or a name of letters, digits, '-', '_' and '.'",
    r"^#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})$": "must be a hex color such as '#2563EB'",
    r"^[a-z][a-z0-9_]{0,62}$": "must be a lowercase identifier (a-z, 0-9, '_'; starting with a letter)",
}
#: The most runs ``on_error: retry`` may ask for.
MAX_ATTEMPTS = 10
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True)
class Issue:
    """One problem in a document: where (field path) and what. ``at_key``: point at the key, not its value."""

    path: Path
    message: str
    at_key: bool = False
    column_offset: int | None = None  # 1-based column inside the field's text (CEL syntax errors)


class ResourceInvalid(ValueError):
    """A document that is not a valid resource; ``issues`` lists every problem."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{format_path(i.path)}: {i.message}" for i in issues))
        self.issues = issues


def format_path(path: Path) -> str:
    """``spec.stages[1].key``; keys with dots are quoted: ``spec.do[0]["slack.post_message"].text``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part or not part.replace("_", "a").replace("-", "a").isalnum():
            out += f'["{part}"]'
        else:
            out += f".{part}" if out else part
    return out or "(document)"


def validate_document(doc: Any, registry: bool = True) -> tuple[Resource | None, list[Issue]]:
    """Parse and check one document; returns the resource (None if anything is wrong) and every issue.

    The envelope, ``metadata`` and ``spec`` are checked separately, so a bad name does not hide a
    bad condition: every problem of the document is reported at once.
    """
    if not isinstance(doc, dict):
        return None, [Issue((), f"a resource must be a mapping, not {_type_name(doc)}")]
    kind = doc.get("kind")
    if kind not in KINDS:
        if kind is None:
            return None, [Issue((), f"missing required field 'kind' (one of {', '.join(KINDS)})")]
        return None, [Issue(("kind",), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    try:
        return MODELS[kind].model_validate(doc), _check_spec(kind, doc["spec"], registry)
    except ValidationError as exc:
        issues = [_issue_from_pydantic(e) for e in exc.errors()]
    if isinstance(doc.get("spec"), dict):
        issues += _check_rest_of_spec(kind, doc["spec"], [i for i in issues if i.path[:1] == ("spec",)], registry)
    return None, issues


def _check_rest_of_spec(kind: str, spec: dict, shape_issues: list[Issue], registry: bool) -> list[Issue]:
    """The meaning checks of a spec without the fields whose shape is wrong, so that every error shows at once
    (an unknown field does not hide a bad condition); nothing when a required field is what is wrong."""
    bad = {i.path[1] for i in shape_issues if len(i.path) > 1}
    try:
        issues = _check_spec(kind, {k: v for k, v in spec.items() if k not in bad}, registry)
    except ValidationError:
        return []
    # a field whose shape is wrong is not also missing (e.g. ``days: soon`` for on: opportunity.stale)
    return [i for i in issues if not (i.path == ("spec",) and any(
        i.message.startswith(f"missing required field {field!r}") for field in bad))]


def _check_spec(kind: str, spec: dict, registry: bool) -> list[Issue]:
    model = PipelineSpec if kind == "Pipeline" else RuleSpec
    parsed = model.model_validate(spec)
    return check_pipeline(parsed) if isinstance(parsed, PipelineSpec) else check_rule(parsed, registry)


def parse_resource(doc: Any, registry: bool = True) -> Resource:
    """The valid resource of a document, or ``ResourceInvalid``."""
    resource, issues = validate_document(doc, registry)
    if issues or resource is None:
        raise ResourceInvalid(issues)
    return resource


def _issue_from_pydantic(error: dict) -> Issue:
    path = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return Issue(path, f"unknown field {path[-1]!r}", at_key=True)
    if kind == "missing":
        return Issue(path[:-1], f"missing required field {path[-1]!r}")
    if kind == "string_pattern_mismatch":
        text = _PATTERN_TEXT.get(error.get("ctx", {}).get("pattern"), error["msg"])
        return Issue(path, f"{text}, got {value!r}")
    if kind == "literal_error":
        return Issue(path, f"{error['msg']}, got {value!r}")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return Issue(
            path, f"wrong type: {error['msg'].lower().removeprefix('input ')}, got {_type_name(value)}"
        )
    message = error["msg"].removeprefix("Value error, ")
    return Issue(path, message)


def _type_name(value: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _transition_probes(spec: PipelineSpec) -> tuple[dict, ...]:
    items = {i for s in spec.stages for i in s.checklist}
    docs = {d for s in spec.stages for d in s.documents}
    actor = {"id": "u_1", "role": "ae"}
    return tuple(
        {
            "opp": SAMPLE_OPP,
            "checklist": dict.fromkeys(items, flag),
            "documents": dict.fromkeys(docs, flag),
            "actor": actor,
            "stage": "prospect",
            "to": "engage",
        }
        for flag in (True, False)
    )


RULE_PROBES: tuple[dict, ...] = (
    {
        "opp": SAMPLE_OPP,
        "event": {},
        "stage": "acquire",
        "org": "acme",
        "branch": "emea",
        "role": "ae",
        "lead": SAMPLE_LEAD,
    },
)


def check_pipeline(spec: PipelineSpec) -> list[Issue]:
    """Meaning of a pipeline spec: unique keys and orders, defined stages, CEL entry criteria."""
    issues: list[Issue] = []
    first_key: dict[str, int] = {}
    first_order: dict[int, int] = {}
    for i, stage in enumerate(spec.stages):
        if stage.key in first_key:
            issues.append(
                Issue(
                    ("spec", "stages", i, "key"),
                    f"duplicate stage key {stage.key!r} (also spec.stages[{first_key[stage.key]}])",
                )
            )
        else:
            first_key[stage.key] = i
        if stage.order is not None:
            if stage.order in first_order:
                issues.append(
                    Issue(
                        ("spec", "stages", i, "order"),
                        f"duplicate order {stage.order} (also spec.stages[{first_order[stage.order]}])",
                    )
                )
            first_order.setdefault(stage.order, i)
        for field in ("checklist", "documents"):
            seen: set[str] = set()
            for j, item in enumerate(getattr(stage, field)):
                if item in seen:
                    issues.append(Issue(("spec", "stages", i, field, j), f"duplicate {field} item {item!r}"))
                seen.add(item)
        for j, template in enumerate(stage.templates):
            try:
                compile_params({"target": template.target})
            except TemplateProblem as exc:
                issues.append(Issue(("spec", "stages", i, "templates", j, "target"), exc.message))
    if spec.initial is not None and spec.initial not in first_key:
        issues.append(
            Issue(("spec", "initial"), f"initial stage {spec.initial!r} is not defined in spec.stages")
        )
    items = {i for s in spec.stages for i in s.checklist}
    docs = {d for s in spec.stages for d in s.documents}
    probes = _transition_probes(spec)
    seen_pairs: dict[tuple[str, str], int] = {}
    for i, transition in enumerate(spec.transitions):
        base: Path = ("spec", "transitions", i)
        if transition.from_ != "*" and transition.from_ not in first_key:
            issues.append(Issue((*base, "from"), f"transition from undefined stage {transition.from_!r}"))
        if transition.to not in first_key:
            issues.append(Issue((*base, "to"), f"transition to undefined stage {transition.to!r}"))
        if transition.from_ == transition.to:
            issues.append(Issue((*base, "to"), f"transition from {transition.to!r} to itself"))
        pair = (transition.from_, transition.to)
        if pair in seen_pairs:
            issues.append(
                Issue(
                    base,
                    f"duplicate transition {pair[0]} -> {pair[1]} (also spec.transitions"
                    f"[{seen_pairs[pair]}])",
                )
            )
        seen_pairs.setdefault(pair, i)
        if transition.when is not None:
            issues.extend(_check_condition(transition.when, (*base, "when"), TRANSITION_VARIABLES, probes))
            issues.extend(_check_item_refs(transition.when, (*base, "when"), "checklist", items))
            issues.extend(_check_item_refs(transition.when, (*base, "when"), "documents", docs))
    return issues


def check_rule(spec: RuleSpec, registry: bool = True) -> list[Issue]:
    """Meaning of a rule spec: known trigger and actions, valid cron, CEL and templates, params per action.

    ``registry=False`` skips the action registry (compiling already applied rules, e.g. in a workflow).
    """
    issues: list[Issue] = []
    if spec.on not in TRIGGERS:
        issues.append(Issue(("spec", "on"), f"unknown trigger {spec.on!r}{_suggest(spec.on, TRIGGERS)}"))
    if spec.stage is not None and spec.on not in STAGE_TRIGGERS:
        issues.append(Issue(("spec", "stage"), f"'stage' applies only to {' and '.join(STAGE_TRIGGERS)}"))
    if spec.on == "schedule":
        if spec.schedule is None:
            issues.append(
                Issue(("spec",), "missing required field 'schedule' (a cron expression) for on: schedule")
            )
        else:
            problem = cron_problem(spec.schedule)
            if problem:
                issues.append(Issue(("spec", "schedule"), problem))
    elif spec.schedule is not None:
        issues.append(Issue(("spec", "schedule"), "'schedule' applies only to on: schedule"))
    for trigger, field in DATE_TRIGGERS.items():
        if spec.on == trigger and getattr(spec, field) is None:
            issues.append(Issue(("spec",), f"missing required field {field!r} (a number of days, 1 or more) "
                                           f"for on: {trigger}"))
        elif spec.on != trigger and getattr(spec, field) is not None:
            issues.append(Issue(("spec", field), f"{field!r} applies only to on: {trigger}", at_key=True))
    if spec.when is not None:
        issues.extend(_check_condition(spec.when, ("spec", "when"), RULE_VARIABLES, RULE_PROBES))
    issues.extend(_check_steps(spec, registry))
    for i, (name, params) in enumerate(spec.actions()):
        if name in HOLDS:
            continue  # checked with the steps
        base: Path = ("spec", "do", i, name)
        info = actions.get_action(name) if registry else None
        if info is None and registry:
            issues.append(
                Issue(base, f"unknown action {name!r}{_suggest(name, actions.known_actions())}", at_key=True)
            )
            continue
        subjects = TRIGGER_SUBJECTS.get(spec.on)
        if info is not None and subjects is not None and not info.runs_for(subjects):
            names = " or ".join(actions.SUBJECT_TEXT[s] for s in sorted(subjects))
            issues.append(
                Issue(base, f"{name} needs {info.needs}, but {spec.on} events name {names} only", at_key=True)
            )
        try:
            compile_params(params)
        except TemplateProblem as exc:
            issues.append(Issue((*base, *exc.path), exc.message))
            continue
        if info is not None and info.params_model is not None:
            try:
                info.params_model.model_validate(params)
            except ValidationError as exc:
                for error in exc.errors():
                    if _is_templated(error.get("input")):
                        continue  # a template's value is only known once rendered; checked at run time
                    issue = _issue_from_pydantic(error)
                    issues.append(Issue((*base, *issue.path), issue.message, issue.at_key))
    return issues


def _check_steps(spec: RuleSpec, registry: bool) -> list[Issue]:
    """Step keys of the right type; ids unique; every ``steps.<id>.output.<field>`` (in params and ``when``)
    names an earlier step and a field its action declares; each ``when`` a valid CEL condition."""
    issues: list[Issue] = []
    earlier: dict[str, actions.Output | None] = {}  # id -> its action's output (None: not declared)
    after_wait = False
    for i, (item, step) in enumerate(zip(spec.do, spec.steps(), strict=True)):
        base: Path = ("spec", "do", i)
        if step.action == WAIT:
            issues.extend(_check_wait(item, step, base, earlier))
            after_wait = True
        elif step.action == APPROVAL:
            issues.extend(_check_approval(item, step, base))
            after_wait = True
        elif "unless" in item:
            issues.append(Issue((*base, "unless"), "unless applies only to a wait step", at_key=True))
        elif after_wait and registry:
            info = actions.get_action(step.action)
            if info is not None and "org" not in info.runs_on:
                issues.append(Issue((*base, step.action), f"{step.action} cannot follow a wait or an approval: "
                                    "after one the steps run in the rule run's own workflow, where provider "
                                    "actions and http.post run", at_key=True))  # fmt: skip
        if "id" in item:
            if not isinstance(step.id, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", step.id):
                issues.append(Issue((*base, "id"), f"{_PATTERN_TEXT[r'^[a-z][a-z0-9_]{0,62}$']}, got {step.id!r}"))
            elif step.id in earlier:
                issues.append(Issue((*base, "id"), f"duplicate step id {step.id!r}"))
        if step.on_error not in ON_ERROR:
            issues.append(Issue((*base, "on_error"), f"on_error must be one of {', '.join(ON_ERROR)}, got {step.on_error!r}"))
        if "attempts" in item:
            if type(step.attempts) is not int or not 1 <= step.attempts <= MAX_ATTEMPTS:
                issues.append(Issue((*base, "attempts"), f"attempts must be an integer from 1 to {MAX_ATTEMPTS}"))
            elif step.on_error != "retry":
                issues.append(Issue((*base, "attempts"), "attempts applies only to on_error: retry"))
        refs: list[tuple[Path, str]] = [((*base, step.action, *p), t) for p, t in strings(step.params)]
        if step.when is not None:
            if not isinstance(step.when, str):
                issues.append(Issue((*base, "when"), "when must be a CEL condition (a string)"))
            else:
                refs.append(((*base, "when"), step.when))
                probe = {**RULE_PROBES[0], "steps": {k: {"output": actions.sample_output(o), "status": "ok"}
                                                     for k, o in earlier.items()}}  # fmt: skip
                issues.extend(_check_condition(step.when, (*base, "when"), STEP_VARIABLES, (probe,)))
        for path, text in refs:
            issues.extend(_check_step_refs(text, path, earlier))
        if isinstance(step.id, str) and step.id not in earlier:
            info = actions.get_action(step.action) if registry and step.action not in HOLDS else None
            holds = {WAIT: WAIT_OUTPUT, APPROVAL: APPROVAL_OUTPUT}
            earlier[step.id] = holds.get(step.action) or (info.output if info is not None else None)
    return issues


def _check_approval(item: dict, step: Step, base: Path) -> list[Issue]:
    """An approval: ``channel``, ``approvers`` (Slack user ids), ``timeout`` (a duration), optional ``text``."""
    issues: list[Issue] = []
    if "on_error" in item:
        issues.append(Issue((*base, "on_error"), "on_error does not apply to an approval step", at_key=True))
    params, path = step.params, (*base, APPROVAL)
    if not isinstance(params, dict):
        return [*issues, Issue(path, "approval must be {channel, approvers: [Slack user ids], timeout, text}")]
    for key in sorted(set(params) - {"channel", "approvers", "timeout", "text"}):
        issues.append(Issue((*path, key), f"unknown field {key!r}", at_key=True))
    for key in ("channel", "approvers", "timeout"):
        if key not in params:
            issues.append(Issue(path, f"missing required field {key!r}"))
    for key in ("channel", "text"):
        if key in params and (not isinstance(params[key], str) or not params[key].strip()):
            issues.append(Issue((*path, key), f"approval.{key} must be a non-empty string"))
    approvers = params.get("approvers")
    if "approvers" in params and (not isinstance(approvers, list) or not approvers
                                  or not all(isinstance(a, str) and a.strip() for a in approvers)):
        issues.append(Issue((*path, "approvers"), "approval.approvers must be a non-empty list of Slack user ids"))
    if "timeout" in params:
        seconds = duration_seconds(params["timeout"])
        if seconds is None or not 1 <= seconds <= MAX_WAIT_SECONDS:
            issues.append(Issue((*path, "timeout"), f"approval.timeout must be a duration such as 90s, 15m, 4h or "
                                                    f"2d, got {params['timeout']!r}"))  # fmt: skip
    try:
        compile_params(params)
    except TemplateProblem as exc:
        issues.append(Issue((*path, *exc.path), exc.message))
    return issues


def _check_wait(item: dict, step: Step, base: Path, earlier: dict[str, actions.Output | None]) -> list[Issue]:
    """A wait: exactly one of ``for`` (a duration) and ``until`` (a CEL timestamp); ``unless`` a condition."""
    issues: list[Issue] = []
    if "on_error" in item:
        issues.append(Issue((*base, "on_error"), "on_error does not apply to a wait step", at_key=True))
    wait, path = step.params, (*base, WAIT)
    steps_probe = {k: {"output": actions.sample_output(o), "status": "ok"} for k, o in earlier.items()}
    probe = {**RULE_PROBES[0], "steps": steps_probe}
    if not isinstance(wait, dict) or len(wait) != 1 or next(iter(wait)) not in ("for", "until"):
        issues.append(Issue(path, "wait must be {for: <duration, e.g. 3d>} or {until: <CEL timestamp>}"))
    elif "for" in wait:
        seconds = duration_seconds(wait["for"])
        if seconds is None or not 1 <= seconds <= MAX_WAIT_SECONDS:
            issues.append(Issue((*path, "for"), f"wait.for must be a duration such as 90s, 15m, 4h or 3d (at most "
                                                f"{MAX_WAIT_SECONDS // 86400}d), got {wait['for']!r}"))  # fmt: skip
    elif not isinstance(wait["until"], str):
        issues.append(Issue((*path, "until"), "wait.until must be a CEL timestamp expression (a string)"))
    else:
        try:
            compile_timestamp(wait["until"], STEP_VARIABLES, (probe,))
        except ExpressionError as exc:
            issues.append(Issue((*path, "until"), exc.message, column_offset=exc.column))
    if step.unless is not None:
        if not isinstance(step.unless, str):
            issues.append(Issue((*base, "unless"), "unless must be a CEL condition (a string)"))
        else:
            unless_probe = {**probe, "documents": {}}
            issues.extend(_check_condition(step.unless, (*base, "unless"), UNLESS_VARIABLES, (unless_probe,)))
            issues.extend(_check_step_refs(step.unless, (*base, "unless"), earlier))
    return issues


def _check_step_refs(text: str, path: Path, earlier: dict[str, actions.Output | None]) -> list[Issue]:
    issues = []
    for step_id, part, field in step_refs(text):
        if step_id not in earlier:
            known = f"earlier steps with an id: {', '.join(earlier)}" if earlier else "no earlier step has an id"
            issues.append(Issue(path, f"unknown step {step_id!r} in `steps.{step_id}` ({known})"))
        elif part not in ("output", "status"):
            issues.append(Issue(path, f"steps.{step_id} has `output` and `status`, not {part!r}"))
        elif part == "output" and field is not None and earlier[step_id] is not None:
            output = earlier[step_id] or {}
            if field not in output:
                fields = ", ".join(output) or "none"
                issues.append(Issue(path, f"step {step_id!r} has no output field {field!r} (its fields: {fields})"))
    return issues


def _is_templated(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _check_condition(
    source: str, path: Path, variables: frozenset[str], probes: tuple[dict, ...]
) -> list[Issue]:
    try:
        compile_condition(source, variables, probes)
    except ExpressionError as exc:
        return [Issue(path, exc.message, column_offset=exc.column)]
    return []


def _check_item_refs(source: str, path: Path, name: str, known: set[str]) -> list[Issue]:
    issues = []
    for ref in sorted(set(re.findall(rf"\b{name}\.([A-Za-z_]\w*)", source))):
        if ref not in known:
            issues.append(Issue(path, f"{name} item {ref!r} is not defined by any stage"))
    return issues


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"


_EVERY = re.compile(r"^@every\s+(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL_SECONDS = 60


def interval_seconds(expression: str) -> int | None:
    """The seconds of an interval schedule (``@every 15m``; units s, m, h, d), or None for anything else."""
    match = _EVERY.match(expression.strip())
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else None


def cron_problem(expression: str) -> str | None:
    """Why a schedule is invalid, or None: a 5-field cron expression (``*``, ``*/n``, ``a-b``, ``a,b``; UTC)
    or an interval ``@every <n><s|m|h|d>`` of at least a minute."""
    if expression.strip().startswith("@every"):
        seconds = interval_seconds(expression)
        if seconds is None:
            return f"interval must look like '@every 15m' (units s, m, h, d), got {expression!r}"
        return None if seconds >= MIN_INTERVAL_SECONDS else "interval must be at least a minute"
    fields = expression.split()
    if len(fields) != 5:
        return f"cron expression must have 5 fields (minute hour day month weekday), got {len(fields)}"
    names = ("minute", "hour", "day of month", "month", "day of week")
    for text, (low, high), label in zip(fields, _CRON_RANGES, names, strict=True):
        for part in text.split(","):
            body, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return f"cron {label}: bad step {step!r}"
            if body == "*":
                continue
            bounds = body.split("-")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                return f"cron {label}: {part!r} is not a number, range or '*'"
            if not all(low <= int(b) <= high for b in bounds):
                return f"cron {label}: {part!r} is outside {low}-{high}"
    return None
