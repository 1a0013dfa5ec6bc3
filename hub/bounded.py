"""Evaluation a request asks for (validate, dry-run): off the event loop, in a small pool, with a deadline.

Conditions and templates are bounded before they run (``rules.cost``, ``rules.templating``), so a
call finishes; the pool keeps even the worst accepted ones from taking the event loop or more than
``WORKERS`` threads, one org has at most ``PER_ORG`` of them in flight (429 beyond: a tenant cannot
fill the pool for the others), and the deadline answers 503 when the pool is saturated. A thread
cannot be killed: the static bounds are what make sure an abandoned call ends soon after its deadline.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hub.problems import Problem

T = TypeVar("T")
WORKERS = 2
PER_ORG = 1
DEADLINE_SECONDS = 5.0

_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="hub-evaluate")
_in_flight: Counter[str] = Counter()


async def evaluate(org_id: str, fn: Callable[..., T], *args: Any, deadline: float = DEADLINE_SECONDS) -> T:
    """``fn(*args)`` in the evaluation pool for an org; 429 if the org already has ``PER_ORG`` in flight,
    503 if it has not finished (queue included) by ``deadline``."""
    if _in_flight[org_id] >= PER_ORG:
        raise Problem(429, "another validation or dry-run of this org is still running; retry when it is done")
    _in_flight[org_id] += 1
    future = asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args))
    future.add_done_callback(lambda _: _release(org_id))  # when the work ends, not when we stop waiting
    try:
        return await asyncio.wait_for(asyncio.shield(future), deadline)
    except TimeoutError:
        raise Problem(503, f"evaluation did not finish within {deadline:g} s; retry later") from None


def _release(org_id: str) -> None:
    _in_flight[org_id] -= 1
    if _in_flight[org_id] <= 0:
        del _in_flight[org_id]
