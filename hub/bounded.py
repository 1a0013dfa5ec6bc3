"""Evaluation a request asks for (validate, dry-run): in worker processes, per-org capped, with a hard deadline.

Conditions and templates are bounded before they run (``rules.cost``, ``rules.templating``), so a
call finishes soon; it still runs in a pool of ``WORKERS`` spawned processes, not in the API process,
so no tenant's evaluation holds the API's event loop or its GIL. One org has at most ``PER_ORG``
evaluations in flight (429 beyond: a tenant cannot fill the pool for the others). A call that has not
finished ``DEADLINE_SECONDS`` after it was queued gets 503 and its pool is killed (processes can be,
threads cannot) and started afresh; calls of other orgs in that pool at that moment get 503 too.
``fn`` and its arguments cross a process boundary: module-level functions and picklable values.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from hub.problems import Problem

T = TypeVar("T")
WORKERS = 2
PER_ORG = 1
DEADLINE_SECONDS = 5.0
STARTUP_SECONDS = 60.0  # a fresh pool's processes import the rules modules first

_pool: ProcessPoolExecutor | None = None
_ready: asyncio.Future | None = None
_in_flight: Counter[str] = Counter()


async def evaluate(org_id: str, fn: Callable[..., T], *args: Any, deadline: float = DEADLINE_SECONDS) -> T:
    """``fn(*args)`` in the pool for an org; 429 if the org already has ``PER_ORG`` in flight, 503 if it
    has not finished (queue included) ``deadline`` seconds after the pool was ready to take it."""
    if _in_flight[org_id] >= PER_ORG:
        raise Problem(429, "another validation or dry-run of this org is still running; retry when it is done")
    _in_flight[org_id] += 1
    try:
        pool = await _started()
        future = asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))
        try:
            return await asyncio.wait_for(future, deadline)
        except TimeoutError:
            _kill(pool)
            raise Problem(503, f"evaluation did not finish within {deadline:g} s; retry later") from None
        except BrokenProcessPool:
            _kill(pool)
            raise Problem(503, "evaluation was stopped (its pool was restarted); retry") from None
    finally:
        _in_flight[org_id] -= 1
        if _in_flight[org_id] <= 0:
            del _in_flight[org_id]


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


def _warm() -> None:
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
