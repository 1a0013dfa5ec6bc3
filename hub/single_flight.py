"""One call shared by concurrent callers asking for the same thing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")


def single_flight(pending: dict[K, asyncio.Future[T]], key: K, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """Concurrent callers with the same ``key`` share one ``call`` (kept in ``pending`` while it runs); a
    caller's cancellation does not cancel it for the others."""
    future = pending.get(key)
    if future is None:
        future = pending[key] = asyncio.ensure_future(call())
        future.add_done_callback(lambda _: pending.pop(key, None))
    return asyncio.shield(future)
