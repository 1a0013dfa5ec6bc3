"""Compiled pipelines and transition checks (pure; safe inside the Temporal workflow sandbox).

``compile_pipeline(document)`` validates a Pipeline once per content hash and returns a
:class:`CompiledPipeline`; ``check_transition(ctx, to)`` lists *every* unmet requirement of a
move (allowed pair, actor role, checklist items and documents of the stage being left, CEL entry
criteria), or an empty list when the move is allowed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from rules.expr import TRANSITION_VARIABLES, Condition, EvaluationError, activation, compile_condition
from rules.model import API_VERSION, Pipeline, Stage, content_hash, dump
from rules.validate import Issue, ResourceInvalid, parse_resource


class Actor(BaseModel):
    """Who asks for a transition."""

    id: str = ""
    role: str = ""


class TransitionContext(BaseModel):
    """What a transition is checked against."""

    opp: dict[str, Any] = Field(default_factory=dict)
    stage: str
    checklist: dict[str, bool] = Field(default_factory=dict)
    documents: dict[str, bool] = Field(default_factory=dict)
    actor: Actor = Field(default_factory=Actor)


class Unmet(BaseModel):
    """One unmet requirement: a machine code, the field it is about and a sentence for people."""

    code: str
    field: str
    message: str


@dataclass(frozen=True)
class CompiledTransition:
    """A transition with its entry criteria compiled."""

    from_: str
    to: str
    condition: Condition | None
    message: str | None
    roles: tuple[str, ...]
    require_checklist: bool
    require_documents: bool


class CompiledPipeline:
    """A validated pipeline, ready to answer transition checks."""

    def __init__(self, pipeline: Pipeline, digest: str) -> None:
        self.resource = pipeline
        self.name = pipeline.metadata.name
        self.content_hash = digest
        ordered = sorted(
            enumerate(pipeline.spec.stages),
            key=lambda p: (p[1].order if p[1].order is not None else p[0], p[0]),
        )
        self.stages: list[Stage] = [s for _, s in ordered]
        self._stages = {s.key: s for s in self.stages}
        self.initial_stage: str = pipeline.spec.initial or pipeline.spec.stages[0].key
        self._items = sorted({i for s in self.stages for i in s.checklist})
        self._docs = sorted({d for s in self.stages for d in s.documents})
        self._transitions: dict[tuple[str, str], CompiledTransition] = {}
        for t in pipeline.spec.transitions:
            condition = compile_condition(t.when, TRANSITION_VARIABLES) if t.when else None
            self._transitions[(t.from_, t.to)] = CompiledTransition(
                t.from_, t.to, condition, t.message, tuple(t.roles), t.require_checklist, t.require_documents
            )

    def stage(self, key: str) -> Stage | None:
        """The stage with this key, or None."""
        return self._stages.get(key)

    def transition(self, from_: str, to: str) -> CompiledTransition | None:
        """The transition allowing ``from_`` → ``to`` (a specific one before a ``*`` one), or None."""
        return self._transitions.get((from_, to)) or self._transitions.get(("*", to))

    def allowed_targets(self, from_: str) -> list[str]:
        """Stage keys reachable from ``from_`` by one transition, in stage order."""
        return [s.key for s in self.stages if s.key != from_ and self.transition(from_, s.key) is not None]

    def check_transition(self, ctx: TransitionContext, to: str) -> list[Unmet]:
        """Every unmet requirement of moving from ``ctx.stage`` to ``to``; empty when allowed."""
        if isinstance(ctx, dict):
            ctx = TransitionContext.model_validate(ctx)
        if to not in self._stages:
            known = ", ".join(self._stages)
            return [
                Unmet(
                    code="unknown_stage",
                    field="to",
                    message=f"stage {to!r} does not exist in pipeline {self.name!r} (stages: {known})",
                )
            ]
        if ctx.stage == to:
            return [
                Unmet(code="same_stage", field="to", message=f"the opportunity is already in stage {to!r}")
            ]
        transition = self.transition(ctx.stage, to)
        if transition is None:
            targets = ", ".join(self.allowed_targets(ctx.stage)) or "none"
            return [
                Unmet(
                    code="transition_not_allowed",
                    field="to",
                    message=f"pipeline {self.name!r} has no transition from {ctx.stage!r} to {to!r} "
                    f"(allowed from {ctx.stage!r}: {targets})",
                )
            ]
        unmet: list[Unmet] = []
        if "*" not in transition.roles and ctx.actor.role not in transition.roles:
            unmet.append(
                Unmet(
                    code="role_not_allowed",
                    field="actor.role",
                    message=f"role {ctx.actor.role!r} may not move {ctx.stage!r} -> {to!r}; "
                    f"allowed roles: {', '.join(transition.roles)}",
                )
            )
        leaving = self._stages.get(ctx.stage)
        if leaving is not None and transition.require_checklist:
            for item in leaving.checklist:
                if not ctx.checklist.get(item, False):
                    unmet.append(
                        Unmet(
                            code="checklist_incomplete",
                            field=f"checklist.{item}",
                            message=f"checklist item {item!r} of stage {leaving.name!r} is not done",
                        )
                    )
        if leaving is not None and transition.require_documents:
            for doc in leaving.documents:
                if not ctx.documents.get(doc, False):
                    unmet.append(
                        Unmet(
                            code="document_missing",
                            field=f"documents.{doc}",
                            message=f"required document {doc!r} of stage {leaving.name!r} is missing",
                        )
                    )
        if transition.condition is not None:
            unmet.extend(self._criteria(transition, ctx, to))
        return unmet

    def _criteria(self, transition: CompiledTransition, ctx: TransitionContext, to: str) -> list[Unmet]:
        assert transition.condition is not None
        variables = {
            "opp": ctx.opp,
            "checklist": {**dict.fromkeys(self._items, False), **ctx.checklist},
            "documents": {**dict.fromkeys(self._docs, False), **ctx.documents},
            "actor": ctx.actor.model_dump(),
            "stage": ctx.stage,
            "to": to,
        }
        source = transition.condition.source
        try:
            if transition.condition.evaluate(activation(variables)):
                return []
        except EvaluationError as exc:
            return [
                Unmet(
                    code="criteria_error",
                    field="when",
                    message=f"entry criteria `{source}` could not be evaluated: {exc}",
                )
            ]
        message = transition.message or f"entry criteria not met: `{source}`"
        return [Unmet(code="criteria_not_met", field="when", message=message)]


_CACHE: OrderedDict[str, CompiledPipeline] = OrderedDict()
_CACHE_SIZE = 256


def compile_pipeline(document: dict[str, Any]) -> CompiledPipeline:
    """Validate and compile a Pipeline document (or a bare ``spec``); cached by content hash.

    Raises ``rules.validate.ResourceInvalid`` listing every problem.
    """
    if "spec" not in document and "stages" in document:
        document = {
            "apiVersion": API_VERSION,
            "kind": "Pipeline",
            "metadata": {"name": "pipeline"},
            "spec": document,
        }
    digest = content_hash(document)
    cached = _CACHE.get(digest)
    if cached is not None:
        _CACHE.move_to_end(digest)
        return cached
    resource = parse_resource(document)
    if not isinstance(resource, Pipeline):
        raise ResourceInvalid([Issue(("kind",), f"expected kind 'Pipeline', got {resource.kind!r}")])
    compiled = CompiledPipeline(resource, content_hash(dump(resource)))
    _CACHE[digest] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled
