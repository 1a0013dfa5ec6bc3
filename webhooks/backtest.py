"""An org's recorded history as rule events, and a rule version's backtest over it (nothing runs).

What the hub keeps, read back in time order for a window ``[since, until)``:

* each opportunity's **transitions** (its projected state's ``history``): ``stage.exited`` and
  ``stage.entered`` as the OpportunityWorkflow raised them, and ``opportunity.created`` with the registration;
* the **domain events** delivered to it (the state's ``events``: payments, contracts, calls, Slack buttons,
  documents);
* **inbox events** (``webhook_events``, kept ``hub.store.inbox.RETENTION`` after they finish) mapped to domain
  events as the relay maps them: those naming no opportunity are the org-level events the org's rules ran on;
  one already delivered to an opportunity counts once, and an opportunity's own record of it wins.

An opportunity is seen with the fields it has now (the projection keeps no older copy of them) and the stage it
was in at that moment. ``opportunity.updated`` is not recorded and cannot be backtested.

The evaluation itself is ``rules.backtest.evaluate_chunk``, ``CHUNK`` items per call through a runner the caller
gives (the API: ``hub.bounded.evaluate``, off the event loop, under its deadline and per-org cap).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connectors.events import MalformedEvent, map_stored
from hub.problems import Problem
from hub.store.inbox import received_between
from hub.store.opportunities import states_between
from rules.backtest import Accumulator, evaluate_chunk

CHUNK = 1000  # items per evaluation call: well inside hub.bounded's deadline
MAX_OPPORTUNITIES = 20_000  # opportunity records read for one window (their states are in memory at once)
MAX_INBOX = 20_000  # inbox events read for one window (bodies up to HUB_MAX_BODY_BYTES each)
OPPORTUNITY_TRIGGERS = frozenset({"stage.entered", "stage.exited", "opportunity.created"})

Runner = Callable[..., Awaitable[Any]]


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _rule_event(state: dict, kind: str, stage: str | None, opp_stage: str, data: dict) -> dict:
    """The event an OpportunityWorkflow gives its rules (``workflows.opportunity``), from a projected state."""
    opp = state.get("opp") or {}
    return {
        "type": kind,
        "stage": stage,
        "opp": {**opp, "id": state["opportunity_id"], "stage": opp_stage, "insight": state.get("insight") or {}},
        "event": data,
        "org": state["org_id"],
        "branch": opp.get("branch"),
        "role": opp.get("owner_role"),
    }


class History:
    """The recorded facts of one window: ``count`` of them, and ``items`` (time-ordered) with the rule events of
    the wanted types they raised."""

    def __init__(self, since: datetime, until: datetime, types: set[str]) -> None:
        self.since, self.until, self.types = since, until, types
        self.count = 0
        self._items: list[tuple[datetime, dict]] = []
        self._states: dict[str, tuple[dict, list[tuple[datetime, dict]]]] = {}
        self._delivered: set[str] = set()

    @property
    def items(self) -> list[dict]:
        """Items with at least one wanted event, oldest first."""
        return [item for _, item in sorted(self._items, key=lambda pair: pair[0])]

    def _within(self, at: datetime) -> bool:
        return self.since <= at < self.until

    def _add(self, at: datetime, key: str, source: str, opportunity: str | None, events: list[dict]) -> None:
        self.count += 1
        wanted = [e for e in events if e["type"] in self.types]
        if wanted:
            item = {"key": key, "at": at.isoformat(), "source": source, "opportunity": opportunity, "events": wanted}
            self._items.append((at, item))

    def opportunity(self, state: dict) -> None:
        """An opportunity's transitions and delivered domain events in the window."""
        oid = state["opportunity_id"]
        moves = sorted(((_at(t["at"]), t) for t in state.get("history") or []), key=lambda pair: pair[1]["seq"])
        self._states[oid] = (state, moves)
        for at, move in moves:
            if not self._within(at):
                continue
            frm, to = move.get("from_stage"), move["to_stage"]
            events = [_rule_event(state, "stage.exited", frm, to, {})] if frm else []
            events.append(_rule_event(state, "stage.entered", to, to, {}))
            if frm is None:
                events.append(_rule_event(state, "opportunity.created", None, to, {}))
            self._add(at, f"transition:{oid}/{move['seq']}", "transition", oid, events)
        for record in state.get("events") or []:
            source = record.get("source") or {}
            self._delivered.add(f"{source.get('provider')}:{source.get('event_id')}")
            at = _at(record["at"])
            if self._within(at):
                stage = _stage_at(moves, at, state.get("stage"))
                event = _rule_event(state, record["type"], None, stage, record.get("data") or {})
                key = f"event:{oid}/{source.get('provider')}:{source.get('event_id')}:{record['type']}"
                self._add(at, key, "event", oid, [event])

    def inbox(self, row: Any) -> None:
        """An inbox event not already counted through the opportunity it was delivered to."""
        if f"{row.provider}:{row.event_id}" in self._delivered:
            return
        try:
            _, mapped = map_stored(row.provider, row.event_type, row.body, row.content_type)  # as the relay does
        except MalformedEvent:
            mapped = None
        events = []
        for e in mapped.events if mapped else []:
            known = self._states.get(e.opportunity_id or "")
            if known is not None:  # delivered, but no longer in the opportunity's own (capped) record
                state, moves = known
                stage = _stage_at(moves, row.received_at, state.get("stage"))
                events.append(_rule_event(state, e.type, None, stage, e.data))
            elif not e.opportunity_id:  # an org-level event: what WebhookEventWorkflow's rules see
                events.append({"type": e.type, "stage": None, "opp": {}, "event": e.data, "org": row.org_id,
                               "branch": None, "role": None, "lead": e.data.get("lead")})  # fmt: skip
        opportunity = next((e.opportunity_id for e in mapped.events if e.opportunity_id), None) if mapped else None
        self._add(row.received_at, f"webhook:{row.provider}:{row.event_id}", "webhook", opportunity, events)


def _stage_at(moves: list[tuple[datetime, dict]], at: datetime, default: str | None) -> str | None:
    """The stage an opportunity was in at ``at``: the last move before it (else its stage now)."""
    stage = None
    for when, move in moves:
        if when > at:
            break
        stage = move["to_stage"]
    return stage or default


async def recorded(session: AsyncSession, org_id: str, since: datetime, until: datetime, types: set[str]) -> History:
    """The org's recorded history in ``[since, until)``, keeping the rule events of ``types``; 422 past
    ``MAX_OPPORTUNITIES`` or ``MAX_INBOX`` (checked before anything is evaluated)."""
    history = History(since, until, types)
    states = await states_between(session, org_id, since, until, MAX_OPPORTUNITIES + 1)
    rows = await received_between(session, org_id, since, until, MAX_INBOX + 1)
    for found, cap, what in ((states, MAX_OPPORTUNITIES, "opportunities with history"), (rows, MAX_INBOX, "inbox events")):
        if len(found) > cap:
            raise Problem(422, f"the window holds more than {cap:,} {what}; backtest shorter windows")
    for state in states:
        history.opportunity(state)
    for row in rows:
        history.inbox(row)
    return history


async def backtest(
    history: History, name: str, rule: dict, compare: dict | None, run: Runner, limit: int
) -> AsyncIterator[dict[str, Any]]:
    """Evaluate rule ``name``'s ``rule`` (and ``compare``; documents as ``rules.backtest.backtest_document``, a
    draft as version 0) over the history, ``CHUNK`` items per ``run(evaluate_chunk, …)``: a ``{"progress": …}``
    after each chunk, then ``{"report": …}``."""
    items = history.items
    totals = Accumulator(compare is not None)
    for start in range(0, len(items), CHUNK):
        totals.add(await run(evaluate_chunk, rule, compare, items[start : start + CHUNK]))
        done = min(start + CHUNK, len(items))
        yield {"progress": {"items": done, "of": len(items), "fired": totals.fired}}
    header = {
        "rule": name,
        "version": rule["version"] or None,
        "draft": not rule["version"],
        "compare_to": compare["version"] if compare else None,
        "since": history.since.isoformat(),
        "until": history.until.isoformat(),
        "events": history.count,
    }
    yield {"report": {**header, **totals.report(limit)}}
