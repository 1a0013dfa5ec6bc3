"""Browser fixtures: the hub served on a real port with its workers, and Debian's Chromium under Playwright.

Chromium comes from the system (``apt-get install chromium``; ``.ci/run`` installs it when missing), never
downloaded by Playwright. Screenshots go to ``$HUB_TEST_ARTIFACTS/console`` (default ``test-artifacts``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from temporalio.client import Client

from hub.runtime import Hub
from hub.settings import Settings

ARTIFACTS = Path(os.environ.get("HUB_TEST_ARTIFACTS", "test-artifacts")) / "console"


def chromium_path() -> str:
    """Debian's Chromium; the test is skipped without it, except in CI where it must be installed."""
    found = os.environ.get("HUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    return found


@pytest.fixture
def live_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(settings: Settings, live_port: int) -> Settings:
    """The suite's settings, with the live server as the public address (OAuth redirect URIs, webhook URLs)."""
    return settings.model_copy(update={"api_port": live_port})


@pytest.fixture
async def live(hub: Hub, client: Client, live_port: int) -> AsyncIterator[str]:
    """The hub's app on 127.0.0.1:<port> (lifespan on: the inbox relay runs) with the hub's own workers."""
    from api import create_app
    from worker import build_workers

    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=live_port, log_level="warning",
                                           lifespan="on"))
    server.install_signal_handlers = lambda: None
    serving = asyncio.create_task(server.serve())
    workers = build_workers(hub, client)
    running = [asyncio.create_task(w.run()) for w in workers]
    while not server.started:
        assert not serving.done(), "the API did not start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{live_port}"
    server.should_exit = True
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    await asyncio.gather(serving, *running, return_exceptions=True)


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[object]:
    """One headless Chromium for the session."""
    from playwright.async_api import async_playwright

    path = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium, live: str) -> AsyncIterator[object]:
    """A fresh browser context (no cookies) on the live hub; the test fails if any page logged an error."""
    context = await chromium.new_context(base_url=live, viewport={"width": 1280, "height": 800})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    tab.on("console", lambda msg: msg.type == "error" and errors.append(f"console: {msg.text}"))
    tab.logged_errors = errors  # a test may take out one it expects
    yield tab
    await context.close()
    assert errors == [], errors  # no script error, no blocked asset, no CSP violation on any page
