"""Determinism: today's SyncWorkflow code replays the histories it records now (one segment per execution, a
continue-as-new) and those kept in ``tests/histories/`` — recorded before chained fetches existed (one fetch and
one store per page), with three chained fetches in flight whatever the provider's rate (before
``CHAIN_AT_RATE``), with as many as the fetcher asked (before segments), and with segments — so runs in flight
during a deploy go on."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from hub.runtime import Hub
from hub.temporal import data_converter
from hub.vault import Vault, parse_keys
from tests.sync.support import PagerStandIn, run_sync, seed_connection, sync_workers
from tests.workflows.test_opportunity_replay import HISTORY_VAULT_KEYS, _histories
from workflows.sync import SyncWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
MODEL = "stripe.customers"


def replayer() -> Replayer:
    return Replayer(workflows=[SyncWorkflow], data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))


async def test_histories_recorded_now_replay(temporal_env: WorkflowEnvironment, hub: Hub) -> None:
    client = await Client.connect(temporal_env.client.service_client.config.target_host, namespace="default",
                                  data_converter=data_converter(Vault(parse_keys(HISTORY_VAULT_KEYS))))
    conn = await seed_connection(hub, "stripe")
    pager = PagerStandIn([{"id": f"cus_{i:04d}", "object": "customer"} for i in range(17)])
    wid = f"sync-replay-{conn.id}"
    async with sync_workers(client, hub, "stripe", pager.fetch):
        summary = await run_sync(client, hub, conn, MODEL, workflow_id=wid, page_size=3, pages_per_execution=4)
    assert (summary.pages, summary.records) == (6, 17)
    first_run = (await client.get_workflow_handle(wid).describe()).raw_description.workflow_execution_info.first_run_id
    histories = await _histories(client, wid, first_run)
    assert len(histories) == 2
    for history in histories:
        await replayer().replay_workflow(history)  # raises on any non-determinism


async def test_histories_kept_from_earlier_versions_replay() -> None:
    files = sorted(HISTORIES.glob("sync-*.json"))
    assert len(files) >= 8, f"the kept SyncWorkflow histories are missing from {HISTORIES}"
    for path in files:
        doc = json.loads(path.read_text())
        await replayer().replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))
