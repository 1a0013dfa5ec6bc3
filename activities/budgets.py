"""Per-connection request budgets, drawn by every request a provider sees, shared by all worker processes.

Temporal's task-queue fairness hands each connection's tasks out at its rate and puts interactive work first
(see worker.py), but it counts tasks, not requests, and its token bucket lets a second's worth through at
once after a pause (measured: 11 tasks in one second on a 5/s key). So each request also draws from its
budget here, in the hub's database: the slots handed out across every process are evenly spaced at the
budget's interval, which keeps the provider under its limit in every window.

Priorities: an interactive request (an action a transition or a webhook caused) takes the next free slot,
however far ahead; a bulk request (a sync page) takes one only when it comes within a quarter of an interval,
and otherwise waits without holding one — so a backfill delays an interactive request by at most the interval
of the bulk request just sent (plus that quarter).

Late wake-ups: a request whose process wakes more than ``LATE`` of an interval after its slot, or more than
``WAKE_SHARE`` of the limit's ``slack`` (the 53 ms by which a request on a per-second limit at 95% may reach
the provider late and keep every window under the limit; half of it, 26 ms, decides at every rate up to 10/s),
(a stalled event loop on a busy machine) does not leave then, bunched with the requests after it: its slot is
spent unused and it takes a new one (at most ``REDRAWS`` times), so requests leave close to their slots and stay
spaced. ``ctx.http`` checks once more right before a request's bytes go out (``sending_hook``): opening a new
connection (TCP, TLS) happens after the draw, and took 55-60 ms for the first requests of a burst. The other
half of the slack is for the rest of the way to the provider (the event loop, the wire), which no check here
can see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from connectors.catalogue import Provider, RateLimit
from hub.store import Database
from hub.store.budgets import ensure_budget, next_slot, take_slot

BULK_HORIZON = 0.25  # of an interval: how far ahead a bulk request may take a slot
LATE = 0.25  # of an interval: how long after its slot a request may still leave
WAKE_SHARE = 0.5  # of the limit's slack: how late after its slot a request may wake and still leave
REDRAWS = 5  # new slots a request takes after waking late, before it leaves anyway

BUDGET_WAIT = Histogram(
    "hub_provider_budget_wait_seconds", "How long a provider request waited for its budget", ["provider", "kind"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LATE_WAKES = Counter(
    "hub_provider_budget_late_wakes_total",
    "Slots spent unused: the request's process woke, or its connection opened, too late to leave on them",
    ["provider"],
)


def budget_key(provider: Provider, limit: RateLimit, connection_id: str) -> str:
    """The budget a request of ``connection_id`` draws from: the connection's own, or the provider's app-wide one."""
    return f"{provider.key}:{'app' if limit.scope == 'app' else connection_id}"


class Budgets:
    """Draws requests from budgets kept in the hub's database. ``clock`` (Unix seconds) and ``sleep`` are
    injectable for tests; every process's clock must agree to within a few milliseconds (NTP)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.db, self._clock, self._sleep = db, clock, sleep
        self._known: set[str] = set()

    async def draw(self, key: str, limit: RateLimit, *, interactive: bool, provider: str = "") -> float:
        """Return when one request may leave under budget ``key``: when its slot (returned) has come."""
        started = self._clock()
        for redraw in range(REDRAWS + 1):
            slot = await self._take(key, limit, interactive)
            if (pause := slot - self._clock()) > 0:
                await self._sleep(pause)
            if self.on_time(slot, limit) or redraw == REDRAWS:
                break  # on time, or out of redraws (else: woke late, the slot is spent; take another)
            LATE_WAKES.labels(provider).inc()
        BUDGET_WAIT.labels(provider, "interactive" if interactive else "bulk").observe(self._clock() - started)
        return slot

    def on_time(self, slot: float, limit: RateLimit) -> bool:
        """Whether a request may still leave on ``slot`` now."""
        return self._clock() - slot <= min(limit.interval * LATE, limit.slack * WAKE_SHARE)

    def sending_hook(self, key: str, limit: RateLimit, slot: float, *, interactive: bool,
                     provider: str = "") -> Callable[[str, dict], Awaitable[None]]:
        """An httpcore ``trace`` hook for a request drawn on ``slot``: just before its bytes go out (after its
        connection was opened: TCP and TLS set-up of a new connection take place after the draw), a slot that
        has gone by is spent and the request takes a new one, as after a late wake-up."""

        async def hook(event: str, info: dict) -> None:
            if event.endswith(".send_request_headers.started") and not self.on_time(slot, limit):
                LATE_WAKES.labels(provider).inc()
                await self.draw(key, limit, interactive=interactive, provider=provider)

        return hook

    async def _take(self, key: str, limit: RateLimit, interactive: bool) -> float:
        """A slot of budget ``key``: the next free one (interactive), or one within the bulk horizon."""
        interval = limit.interval
        horizon = None if interactive else interval * BULK_HORIZON
        while True:
            now = self._clock()
            async with self.db.session() as session:
                if key not in self._known:
                    await ensure_budget(session, key, now)
                slot = await take_slot(session, key, now, interval, horizon)
                waiting_for = None if slot is not None else await next_slot(session, key)
            self._known.add(key)
            if slot is not None:
                return slot
            await self._sleep(max((waiting_for or now) - (horizon or 0.0) - self._clock(), 0.001))
