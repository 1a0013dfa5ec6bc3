"""Evaluation a request asks for (validate, dry-run): off the event loop, in a small pool, with a deadline.

Conditions and templates are bounded before they run (``rules.cost``, ``rules.templating``), so a
call finishes; the pool keeps even the worst accepted ones from taking the event loop or more than
``WORKERS`` threads, and the deadline answers 503 when the pool is saturated. A thread cannot be
killed: the static bounds are what make sure an abandoned call ends soon after its deadline.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hub.problems import Problem

T = TypeVar("T")
WORKERS = 2
DEADLINE_SECONDS = 5.0

_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="hub-evaluate")


async def evaluate(fn: Callable[..., T], *args: Any, deadline: float = DEADLINE_SECONDS) -> T:
    """``fn(*args)`` in the evaluation pool; 503 if it has not finished (queue included) by ``deadline``."""
    future = asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args))
    try:
        return await asyncio.wait_for(future, deadline)
    except TimeoutError:
        raise Problem(503, f"evaluation did not finish within {deadline:g} s; retry later") from None
