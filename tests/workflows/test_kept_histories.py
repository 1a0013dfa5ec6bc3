"""Kept histories of the ConnectionWorkflow and the GraphSubscriptionWorkflow (as ``tests/histories/`` keeps the
opportunity, rules, sync and webhook workflows'): each scenario's history recorded now replays under today's code,
and so do the histories kept in ``tests/histories/`` — runs in flight during a deploy go on.

The scenarios run on a client whose payload codec uses ``HISTORY_VAULT_KEYS``, so kept histories stay readable.
To regenerate them (after a deliberate, versioned workflow change), run::

    HUB_RECORD_HISTORIES=1 .venv/bin/python -m pytest -q tests/workflows/test_kept_histories.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.connector_types import (
    FRESH_TOKEN_UPDATE,
    ConnectionRef,
    TokenRequest,
    TokenState,
    connection_workflow_id,
)
from activities.graph_types import GraphSubscriptionInput
from hub.runtime import Hub
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, connection_workers, seed_connection
from tests.fakes.graph_server import GraphFake
from tests.fakes.oauth_server import OAuthFake
from tests.webhooks.test_graph_subscription import PUBLIC, _graph_connection, upkeep_workers
from tests.workflows.opportunity_kit import GRAPH_TOKEN
from tests.workflows.test_opportunity_replay import HISTORY_VAULT_KEYS, RECORD
from workflows.connection import ConnectionWorkflow
from workflows.graph_subscription import GraphSubscriptionResult, GraphSubscriptionWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
KEPT = {"connection": ConnectionWorkflow, "graph-subscription": GraphSubscriptionWorkflow}


def _replayer(workflow: type) -> Replayer:
    return Replayer(workflows=[workflow], data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))


async def _history_client(temporal_env: WorkflowEnvironment) -> Client:
    return await Client.connect(temporal_env.client.service_client.config.target_host, namespace="default",
                                data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))


async def _keep(prefix: str, workflow_id: str, history: WorkflowHistory) -> None:
    """Replay ``history`` now; with ``HUB_RECORD_HISTORIES=1`` also keep it as ``{prefix}-run1.json``."""
    await _replayer(KEPT[prefix]).replay_workflow(history)  # raises on any non-determinism
    if RECORD:
        doc = {"workflow_id": workflow_id, "history": json.loads(history.to_json())}
        (HISTORIES / f"{prefix}-run1.json").write_text(json.dumps(doc, indent=1) + "\n")


@pytest.fixture
def idp() -> Iterator[OAuthFake]:
    with OAuthFake(expires_in=3600) as fake:
        fake.register_client(CLIENT_ID, CLIENT_SECRET)
        yield fake


async def test_connection_history_recorded_now_replays(
    temporal_env: WorkflowEnvironment, hub: Hub, idp: OAuthFake
) -> None:
    """Load, one refresh through the ``fresh_token`` Update, a caller already served, stop."""
    client = await _history_client(temporal_env)
    access, refresh = idp.issue(CLIENT_ID)
    conn = await seed_connection(hub, idp.url, access_token=access, refresh_token=refresh)
    wid = connection_workflow_id(conn.org_id, conn.id)
    async with connection_workers(client, hub):
        handle = await client.start_workflow(ConnectionWorkflow.run, ConnectionRef(org_id=conn.org_id,
                                             connection_id=conn.id), id=wid, task_queue=hub.settings.task_queue)
        for seen in (1, 1):  # the second caller held the same old version: served without a refresh
            state = await handle.execute_update(FRESH_TOKEN_UPDATE, TokenRequest(seen_version=seen),
                                                result_type=TokenState)
            assert state.version == 2
        await handle.signal(ConnectionWorkflow.stop)
        assert await handle.result() == "stopped"
    assert idp.token_calls == ["refresh_token"]
    await _keep("connection", wid, await handle.fetch_history())


async def test_graph_subscription_history_recorded_now_replays(
    temporal_env: WorkflowEnvironment, hub: Hub, task_queue: str
) -> None:
    """A run that finds no subscription of this app and makes one (token state, list, create)."""
    client = await _history_client(temporal_env)
    with GraphFake(tokens=(GRAPH_TOKEN,)) as graph:
        conn = await _graph_connection(hub, graph)
        wid = f"graph-subscription-kept/{conn.id}"
        async with upkeep_workers(hub, client, task_queue):
            result = await client.execute_workflow(
                GraphSubscriptionWorkflow.run,
                GraphSubscriptionInput(org_id=conn.org_id, connection_id=conn.id,
                                       notification_url=f"{PUBLIC}/webhooks/microsoft/{conn.id}"),
                id=wid, task_queue=task_queue, result_type=GraphSubscriptionResult,
            )  # fmt: skip
        assert result.status == "subscribed" and list(graph.subscriptions) == [result.subscription_id]
    await _keep("graph-subscription", wid, await client.get_workflow_handle(wid).fetch_history())


@pytest.mark.parametrize("prefix", sorted(KEPT))
async def test_kept_histories_replay(prefix: str) -> None:
    files = sorted(HISTORIES.glob(f"{prefix}-*.json"))
    assert files, f"no kept {prefix} histories in {HISTORIES}; see this module's docstring to record them"
    for path in files:
        doc = json.loads(path.read_text())
        await _replayer(KEPT[prefix]).replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))
