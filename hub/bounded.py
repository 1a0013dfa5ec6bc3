"""Evaluation a request asks for (validate, dry-run): in worker processes, per-org queued, with a hard deadline.

Conditions and templates are bounded before they run (``rules.cost``, ``rules.templating``), so a
call finishes soon; it still runs in a pool of ``WORKERS`` spawned processes, not in the API process,
so no tenant's evaluation holds the API's event loop or its GIL. One org has at most ``PER_ORG``
evaluations running (a tenant cannot fill the pool for the others); up to ``QUEUE`` more wait their turn
(waiting costs no CPU), and beyond that the org gets 429. A call that has not finished ``DEADLINE_SECONDS``
after its turn came gets 503 and its pool is killed (processes can be, threads cannot) and started afresh;
calls of other orgs in that pool at that moment get 503 too.

Two things keep one org's evaluations from taking the CPU the other orgs' work needs:
- the pool's processes run at the lowest OS priority (``NICE``): the API, the workers and Temporal
  preempt them whenever they have work, so evaluation only takes CPU nobody else wants;
- each org has a CPU budget (``CPU_SHARE`` seconds of evaluation CPU per second, up to ``CPU_BURST``
  saved): every evaluation's CPU time is charged to its org; an org in debt waits for its budget to refill
  before its next evaluation runs, and gets 429 with a ``Retry-After`` if that would take more than
  ``MAX_WAIT_SECONDS``. Budgets are per API process.
So an org's evaluations go at its own pace whatever it sends: a client that keeps many requests in flight
waits, it does not make the API parse a stream of refused ones.
``fn`` and its arguments cross a process boundary: module-level functions and picklable values.
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from hub.problems import Problem

T = TypeVar("T")
WORKERS = 2
PER_ORG = 1  # an org's evaluations running at once
QUEUE = 4  # an org's evaluations waiting for their turn; 429 beyond
MAX_WAIT_SECONDS = 10.0  # the longest an evaluation waits for its org's CPU budget (429 with Retry-After beyond)
DEADLINE_SECONDS = 5.0
STARTUP_SECONDS = 60.0  # a fresh pool's processes import the rules modules first
NICE = 19  # the pool's processes yield the CPU to everything else
CPU_SHARE = 0.25  # seconds of evaluation CPU an org earns per second
CPU_BURST = 2.0  # the most an org can save up (an idle org's first evaluations are never refused)

_pool: ProcessPoolExecutor | None = None
_ready: asyncio.Future | None = None
_admitted: Counter[str] = Counter()  # org → its evaluations running or waiting for their turn
_turns: dict[str, asyncio.Semaphore] = {}  # org → its PER_ORG turns (of the loop in _turns_loop)
_turns_loop: asyncio.AbstractEventLoop | None = None
_budgets: dict[str, tuple[float, float]] = {}  # org → (CPU seconds available, monotonic time of that figure)


def _available(org_id: str, now: float) -> float:
    """The org's evaluation CPU budget now: what it had, refilled at ``CPU_SHARE`` up to ``CPU_BURST``."""
    left, then = _budgets.get(org_id, (CPU_BURST, now))
    return min(CPU_BURST, left + (now - then) * CPU_SHARE)


def _charge(org_id: str, cpu_seconds: float) -> None:
    now = time.monotonic()
    left = _available(org_id, now) - cpu_seconds
    if left >= CPU_BURST:
        _budgets.pop(org_id, None)  # a full budget needs no entry
    else:
        _budgets[org_id] = (left, now)


def refusal(org_id: str) -> Problem | None:
    """The 429 an evaluation of ``org_id`` would get now (its queue full, or its CPU budget too far spent), or None.
    The API asks before it reads a request's body (``api.EvaluationAdmission``): a refused request costs no parsing."""
    if _admitted[org_id] >= PER_ORG + QUEUE:
        return Problem(429, f"{_admitted[org_id]} validations or dry-runs of this org are running or waiting; "
                            "retry when one is done")  # fmt: skip
    if (wait := _budget_wait(org_id)) > MAX_WAIT_SECONDS:
        return _spent(wait)
    return None


def _budget_wait(org_id: str) -> float:
    """Seconds until the org's evaluation CPU budget is out of debt (0 if it is not in debt)."""
    return max(0.0, -_available(org_id, time.monotonic()) / CPU_SHARE)


def _spent(wait: float) -> Problem:
    seconds = math.ceil(wait)
    return Problem(429, f"this org's evaluation CPU budget is spent; retry in {seconds} s",
                   headers={"Retry-After": str(seconds)})  # fmt: skip


def _turn(org_id: str) -> asyncio.Semaphore:
    """The org's turns on this event loop."""
    global _turns_loop
    loop = asyncio.get_running_loop()
    if _turns_loop is not loop:
        _turns.clear()
        _turns_loop = loop
    return _turns.setdefault(org_id, asyncio.Semaphore(PER_ORG))


async def evaluate(org_id: str, fn: Callable[..., T], *args: Any, deadline: float = DEADLINE_SECONDS) -> T:
    """``fn(*args)`` in the pool for an org, when its turn comes and its CPU budget allows; 429 if ``QUEUE`` of
    the org's evaluations already wait or its budget would take too long to refill, 503 if it has not finished
    ``deadline`` seconds after its turn came (the pool's start not counted)."""
    if (refused := refusal(org_id)) is not None:
        raise refused
    _admitted[org_id] += 1
    try:
        async with _turn(org_id):
            if (wait := _budget_wait(org_id)) > MAX_WAIT_SECONDS:
                raise _spent(wait)  # the evaluations before it ran up a debt meanwhile
            await asyncio.sleep(wait)
            return await _run(org_id, fn, *args, deadline=deadline)
    finally:
        _admitted[org_id] -= 1
        if _admitted[org_id] <= 0:
            del _admitted[org_id]
            _turns.pop(org_id, None)


async def _run(org_id: str, fn: Callable[..., T], *args: Any, deadline: float) -> T:
    """``fn(*args)`` in the pool now, its CPU time charged to the org."""
    pool = await _started()
    started = time.monotonic()
    future = asyncio.get_running_loop().run_in_executor(pool, functools.partial(_timed, fn, *args))
    try:
        failed, value, cpu_seconds = await asyncio.wait_for(future, deadline)
    except TimeoutError:
        _kill(pool)
        _charge(org_id, time.monotonic() - started)  # at most a whole process for that long
        raise Problem(503, f"evaluation did not finish within {deadline:g} s; retry later") from None
    except BrokenProcessPool:
        _kill(pool)
        raise Problem(503, "evaluation was stopped (its pool was restarted); retry") from None
    _charge(org_id, cpu_seconds)
    if failed:
        raise value
    return value


async def _started() -> ProcessPoolExecutor:
    """The pool, its processes started (each imports what it evaluates once)."""
    global _pool, _ready
    loop = asyncio.get_running_loop()
    if _pool is None or _ready is None or _ready.get_loop() is not loop:
        _pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_warm)
        pool = _pool
        _ready = asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(WORKERS)))
    pool, ready = _pool, _ready
    try:
        await asyncio.wait_for(asyncio.shield(ready), STARTUP_SECONDS)
    except (TimeoutError, BrokenProcessPool):
        _kill(pool)
        raise Problem(503, "the evaluation workers are not available; retry") from None
    return pool


def _timed(fn: Callable[..., T], *args: Any) -> tuple[bool, Any, float]:
    """In a pool process: ``(failed, result or exception, CPU seconds it took)``."""
    cpu = time.process_time()
    try:
        result: tuple[bool, Any] = (False, fn(*args))
    except Exception as exc:  # noqa: BLE001 - handed back whole, raised again in the caller
        result = (True, exc)
    return (*result, time.process_time() - cpu)


def lowest_priority() -> None:
    """Make this process yield the CPU to everything else (nice ``NICE``): for tenant-sized work in child processes
    (evaluations here, model training)."""
    if os.getpriority(os.PRIO_PROCESS, 0) < NICE:
        os.nice(NICE - os.getpriority(os.PRIO_PROCESS, 0))


def _warm() -> None:
    """Start a pool process: lowest priority, the rules modules imported."""
    lowest_priority()
    import rules.engine
    import rules.loader  # noqa: F401


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's processes now (a deadline passed) and let the next call start a new pool."""
    global _pool, _ready
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if _pool is pool:
        _pool, _ready = None, None
