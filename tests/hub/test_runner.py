"""Shutdown of the serving process: components that do not stop in time are cancelled."""

from __future__ import annotations

import asyncio

from app.runner import stop_within


async def test_stop_within_cancels_what_outlives_the_grace_and_returns_every_outcome() -> None:
    async def stops() -> str:
        await asyncio.sleep(0)
        return "stopped"

    async def fails() -> None:
        raise RuntimeError("boom")

    hangs = asyncio.create_task(asyncio.Event().wait())
    results = await stop_within([asyncio.create_task(stops()), asyncio.create_task(fails()), hangs], grace=0.2)
    assert results[0] == "stopped"
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], asyncio.CancelledError) and hangs.cancelled()


async def test_stop_within_nothing_returns_at_once() -> None:
    assert await stop_within([], grace=10) == []
