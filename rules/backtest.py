"""Backtest: what a rule version would have done with recorded history, and how another version differs.

Pure (no I/O, no clock): the caller gathers the recorded history (``webhooks.backtest``) as *items*, each one
recorded fact with the rule events it raised, in time order::

    {"key": "transition:o1/3", "at": "2026-01-05T10:00:00+00:00", "source": "transition",
     "opportunity": "o1", "events": [{"type": "stage.exited", ...}, {"type": "stage.entered", ...}]}

``evaluate_chunk`` (one picklable call, run in ``hub.bounded``'s worker processes) evaluates a chunk of items
with the rule under test and, optionally, the version to compare with; ``Accumulator`` folds the chunks into
the report. Nothing runs: actions are rendered as the dry-run renders them, with where they would run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rules.actions import placement
from rules.engine import compile_rules

#: Reasons of outcomes that are errors of the rule (not a false condition or another stage or scope).
ERROR_PREFIXES = ("condition error", "do[", "invalid rule")
MAX_ERROR_EXAMPLES = 10


def backtest_document(document: dict[str, Any], version: int) -> dict[str, Any]:
    """A rule document as the backtest evaluates it: enabled (a disabled version is tested as if switched on)."""
    return {**document, "spec": {**document.get("spec", {}), "enabled": True}, "version": version}


def triggers(*documents: dict[str, Any] | None) -> set[str]:
    """The event types the documents listen to: only these events are evaluated."""
    return {str(d["spec"].get("on")) for d in documents if d is not None}


def _firings(document: dict[str, Any], items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], int]:
    ruleset = compile_rules([document])
    firings: list[dict[str, Any]] = []
    errors: list[str] = []
    evaluated = 0
    trigger = str(document["spec"].get("on"))
    for item in items:
        for event in item["events"]:
            if event.get("type") != trigger:
                continue
            evaluated += 1
            (outcome,) = ruleset.evaluate(event)
            if outcome.fired:
                firings.append(
                    {
                        "key": f"{item['key']}#{event['type']}",
                        "at": item["at"],
                        "source": item["source"],
                        "opportunity": item.get("opportunity"),
                        "type": event["type"],
                        "stage": event.get("stage"),
                        "actions": [
                            dict(zip(("name", "params", "runs_for", "problem"),
                                     (a.name, a.params, *placement(a.name, event)), strict=True))
                            for a in outcome.actions
                        ],
                    }
                )  # fmt: skip
            elif outcome.reason.startswith(ERROR_PREFIXES):
                errors.append(outcome.reason)
    return firings, errors, evaluated


def evaluate_chunk(
    rule: dict[str, Any], compare: dict[str, Any] | None, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """The firings (and errors) of ``rule`` and of ``compare`` over ``items``; documents as ``backtest_document``."""
    firings, errors, evaluated = _firings(rule, items)
    out: dict[str, Any] = {"evaluated": evaluated, "firings": firings, "errors": errors}
    if compare is not None:
        out["compare_firings"], out["compare_errors"], _ = _firings(compare, items)
    return out


@dataclass
class _Side:
    firings: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, firings: list[dict[str, Any]], errors: list[str]) -> None:
        for firing in firings:
            self.firings[firing["key"]] = firing
        self.errors += len(errors)
        for reason in errors:
            if len(self.examples) < MAX_ERROR_EXAMPLES and reason not in self.examples:
                self.examples.append(reason)

    def summary(self, limit: int) -> dict[str, Any]:
        opportunities = sorted({f["opportunity"] for f in self.firings.values() if f["opportunity"]})
        firings = list(self.firings.values())
        return {
            "fired": len(firings),
            "opportunities": {"count": len(opportunities), "ids": opportunities[:limit]},
            "errors": {"count": self.errors, "examples": self.examples},
            "firings": firings[:limit],
            "truncated": len(firings) > limit or len(opportunities) > limit,
        }


class Accumulator:
    """Folds ``evaluate_chunk`` results into the report (firings in item order, a diff when comparing)."""

    def __init__(self, comparing: bool) -> None:
        self.comparing = comparing
        self.evaluated = 0
        self.rule = _Side()
        self.compare = _Side()

    def add(self, chunk: dict[str, Any]) -> None:
        """Take one chunk's result."""
        self.evaluated += chunk["evaluated"]
        self.rule.add(chunk["firings"], chunk["errors"])
        if self.comparing:
            self.compare.add(chunk["compare_firings"], chunk["compare_errors"])

    @property
    def fired(self) -> int:
        """Firings of the rule under test so far."""
        return len(self.rule.firings)

    def report(self, limit: int) -> dict[str, Any]:
        """Counts, opportunities and firings (each list at most ``limit`` long) and, when comparing, the diff:
        firings only the tested version has, only the other has, and those where both fire with other actions."""
        out: dict[str, Any] = {"evaluated": self.evaluated, **self.rule.summary(limit)}
        if not self.comparing:
            return out
        mine, theirs = self.rule.firings, self.compare.firings
        only_mine = [f for k, f in mine.items() if k not in theirs]
        only_theirs = [f for k, f in theirs.items() if k not in mine]
        changed = [
            {**f, "compare_actions": theirs[k]["actions"]}
            for k, f in mine.items()
            if k in theirs and theirs[k]["actions"] != f["actions"]
        ]
        compare = self.compare.summary(limit)
        out["compare"] = {
            "fired": compare["fired"],
            "opportunities": compare["opportunities"],
            "errors": compare["errors"],
            "only_version": {"count": len(only_mine), "firings": only_mine[:limit]},
            "only_compare_to": {"count": len(only_theirs), "firings": only_theirs[:limit]},
            "changed_actions": {"count": len(changed), "firings": changed[:limit]},
        }
        return out
