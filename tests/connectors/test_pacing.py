"""The provider ``Pacer`` on a virtual clock: even spacing, the hard windows on actual departure times, lost
time made up after a stall or a late upstream, and the windows the catalogue's ``RateLimit`` derives."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from activities.connections import Pacer
from connectors.catalogue import RateLimit

R50 = RateLimit(per_second=50)  # 47.5/s on average; ≤ 50 in any 1/0.95 s and ≤ 48 in any second


class VirtualTime:
    """A clock and a ``sleep`` for the pacer. Sleepers wake ``lag`` late (a busy event loop), and a sleeper due
    inside ``stall`` = ``(start, end)`` wakes at ``end`` (a blocked one)."""

    def __init__(self, *, lag: float = 0.0, stall: tuple[float, float] | None = None) -> None:
        self.now = 0.0
        self.lag, self.stall = lag, stall
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = self.now + seconds + self.lag
        if self.stall and self.stall[0] <= wake < self.stall[1]:
            wake = self.stall[1]
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (wake, next(self._order), future))
        await future

    async def run(self, pacer: Pacer, callers: int) -> list[float]:
        """``callers`` calling at once; returns the times they were let go, in order."""
        released: list[float] = []

        async def caller() -> None:
            await pacer.wait()
            released.append(self.now)

        tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
        while True:
            for _ in range(3):  # let every woken task run to its next sleep
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return released
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)


def pacer(clock: VirtualTime) -> Pacer:
    return Pacer(R50.queue_per_second, R50.windows, clock=clock.clock, sleep=clock.sleep)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def most_in_any_window(times: list[float], seconds: float) -> int:
    return max(sum(1 for u in times if t <= u < t + seconds - 1e-9) for t in times)


def test_rate_limit_windows_stretch_the_providers_and_cap_each_second() -> None:
    assert R50.queue_per_second == pytest.approx(47.5)
    assert R50.windows == [(50, pytest.approx(1 / 0.95)), (48, 1.0)]
    slow = RateLimit(per_second=0.83)  # 3,000 an hour: one request per 1.2 s
    assert slow.queue_per_second == pytest.approx(0.83 * 0.95)
    assert slow.windows == [(1, pytest.approx(1 / 0.83 / 0.95)), (1, 1.0)]
    assert RateLimit(per_second=5, headroom=0.9).windows == [(5, pytest.approx(1 / 0.9)), (5, 1.0)]


async def test_a_backlog_leaves_evenly_at_the_average_rate_without_a_first_burst() -> None:
    clock = VirtualTime()
    released = await clock.run(pacer(clock), 200)
    assert min(gaps(released)) == pytest.approx(max(gaps(released))) == pytest.approx(1 / 47.5)


async def test_late_wakeups_cost_one_lag_per_window_not_one_per_call() -> None:
    clock = VirtualTime(lag=0.008)  # every sleeper wakes 8 ms late
    released = await clock.run(pacer(clock), 200)
    # the next call's slot does not move; only the call 50 later must wait for a late one's window to pass
    assert released[-1] <= 199 / 47.5 + 0.008 * (200 / 50 + 1)
    assert released[-1] < 199 * (1 / 47.5 + 0.008) - 1.0  # what spacing from the last departure would cost


async def test_windows_hold_on_departure_times_however_late_sleepers_wake() -> None:
    clock = VirtualTime(stall=(0.5, 2.0))  # everyone due in these 1.5 s wakes at once
    released = await clock.run(pacer(clock), 300)
    assert not any(0.5 < t < 2.0 for t in released)
    assert min(gaps(released)) >= 1 / 47.5 / 2 - 1e-9  # catching up is a quick succession, not a burst
    for requests, seconds in R50.windows:
        assert most_in_any_window(released, seconds) == requests  # full, never over


async def test_a_stall_costs_at_most_its_length() -> None:
    smooth, stalled = VirtualTime(), VirtualTime(stall=(1.0, 1.3))
    expected = await smooth.run(pacer(smooth), 200)
    released = await stalled.run(pacer(stalled), 200)
    assert expected[-1] < released[-1] <= expected[-1] + 0.3 + 1e-9
    for requests, seconds in R50.windows:
        assert most_in_any_window(released, seconds) <= requests
