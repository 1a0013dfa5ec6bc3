"""``fulqrun-hub webhooks send``: signs with the connection's stored secret and posts to a running API."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from api import create_app
from hub.runtime import Hub
from tests.conftest import shared_data
from tests.webhooks.conftest import inbox_rows, make_connection


@pytest.fixture
async def running_api(hub: Hub) -> AsyncIterator[str]:
    """The API served by uvicorn on a free loopback port (relay off); yields its base URL."""
    hub.settings.webhook_relay = False
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def _cli(hub: Hub, vault_keys: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "HUB_DATABASE_URL": hub.db.url,
        "HUB_VAULT_KEYS": vault_keys,
        "HUB_DATA_DIR": str(hub.settings.data_dir),
    }
    cli = Path(sys.executable).parent / "fulqrun-hub"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "webhooks", "send", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_send_signs_with_the_stored_secret_and_posts(hub: Hub, running_api: str, vault_keys: str) -> None:
    con = await make_connection(hub, "stripe", secrets="whsec_cli_new\nwhsec_cli_old")
    fixture = str(shared_data("webhooks", "stripe", "invoice.paid.json"))
    url = f"{running_api}/webhooks/stripe/{con}"
    code, out, _ = await _cli(hub, vault_keys, "stripe", fixture, "--connection", con, "--url", url)
    assert code == 0 and out.startswith('200 {"accepted":1'), out
    code, out, _ = await _cli(hub, vault_keys, "stripe", fixture, "--connection", con, "--url", url)
    assert code == 0 and '"duplicates":1' in out, out
    code, out, _ = await _cli(hub, vault_keys, "stripe", fixture, "--connection", con, "--url", url, "--new-id")
    assert code == 0 and '"accepted":1' in out, out
    rows = await inbox_rows(hub)
    assert len(rows) == 2 and rows[1].event_id.startswith("evt_") and rows[1].event_type == "invoice.paid"


async def test_send_slack_interactivity_and_docusign_xml(hub: Hub, running_api: str, vault_keys: str) -> None:
    slack, docusign = await make_connection(hub, "slack"), await make_connection(hub, "docusign")
    for provider, con, fixture in (
        ("slack", slack, shared_data("webhooks", "slack", "block_actions.json")),
        ("docusign", docusign, shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml")),
    ):
        code, out, _ = await _cli(hub, vault_keys, provider, str(fixture), "--connection", con,
                               "--url", f"{running_api}/webhooks/{provider}/{con}")
        assert code == 0 and out.startswith("200"), out
    assert {(r.provider, r.event_type) for r in await inbox_rows(hub)} == {
        ("slack", "block_actions"), ("docusign", "envelope-completed"),
    }


async def test_send_to_an_unknown_connection_fails_clearly(hub: Hub, running_api: str, vault_keys: str) -> None:
    fixture = str(shared_data("webhooks", "stripe", "invoice.paid.json"))
    code, _, err = await _cli(hub, vault_keys, "stripe", fixture, "--connection", "con_nope", "--url", running_api)
    assert code == 1 and "no stripe connection 'con_nope'" in err
