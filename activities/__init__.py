"""Every side effect the workflows need, as Temporal activities with injected dependencies."""

from __future__ import annotations

from collections.abc import Callable

from hub.runtime import Hub


def build_activities(hub: Hub) -> list[Callable]:
    """The activities of the main task queue, bound to the runtime's dependencies."""
    return []
