"""The worker registers every activity the activities package defines, on the main or a provider queue."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from temporalio import activity
from temporalio.client import Client

import activities
from hub.runtime import Hub
from worker import build_workers


def defined_activity_names() -> set[str]:
    """The name of every ``@activity.defn`` method or function in the activities package."""
    names = set()
    for info in pkgutil.iter_modules(activities.__path__, "activities."):
        for _, member in inspect.getmembers(importlib.import_module(info.name)):
            candidates = [member, *vars(member).values()] if inspect.isclass(member) else [member]
            for fn in candidates:
                defn = activity._Definition.from_callable(fn) if callable(fn) else None
                if defn is not None:
                    names.add(defn.name)
    return names


async def test_every_defined_activity_is_registered_on_a_worker(hub: Hub, client: Client) -> None:
    registered = set()
    for worker in build_workers(hub, client):
        registered |= {activity._Definition.must_from_callable(fn).name for fn in worker.config()["activities"]}
    defined = defined_activity_names()
    assert len(defined) > 20
    assert defined - registered == set()
