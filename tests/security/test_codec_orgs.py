"""Finding 6: each org's Temporal payloads are sealed under its own data key; ``/codec`` decodes only the
caller's org; shredding an org's key makes its payloads unreadable; old payloads and histories still open.

The attack: org B's admin took org A's opportunity input from Temporal and had ``/codec`` decrypt it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from hub.auth import create_key
from hub.org_keys import OrgKeyring
from hub.runtime import Hub
from hub.temporal import data_converter
from hub.vault import ORG_METADATA, EncryptionCodec, Vault, VaultError, parse_keys
from tests.conftest import bearer
from tests.hub.test_cli import cli_env  # noqa: F401 - the CLI's environment fixture
from tests.workflows.test_opportunity_replay import HISTORIES, HISTORY_VAULT_KEYS
from workflows.opportunity import OpportunityWorkflow

SECRET = "Secret deal: Project Falcon, 4.2M"


@activity.defn(name="security.echo")
async def echo(text: str) -> str:
    return text.upper()


@workflow.defn(name="SecurityEcho")
class Echo:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity("security.echo", text, start_to_close_timeout=timedelta(seconds=10))


async def _org_client(temporal_env: WorkflowEnvironment, hub: Hub) -> Client:
    """A client as the hub's processes make it: the per-org converter."""
    return await Client.connect(temporal_env.client.service_client.config.target_host, namespace="default",
                                data_converter=data_converter(hub.vault, hub.keyring))


def _payloads(history: WorkflowHistory) -> list[Payload]:
    found: list[Payload] = []

    def walk(message) -> None:
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            items = value if isinstance(value, Sequence) else [value]
            for item in items:
                if isinstance(item, Payload):
                    found.append(item)
                elif hasattr(item, "ListFields"):
                    walk(item)

    for event in history.events:
        walk(event)
    return found


async def _codec(api: httpx.AsyncClient, op: str, key: str, payloads: list[Payload]) -> list[Payload]:
    body = json_format.MessageToJson(Payloads(payloads=payloads))
    answer = await api.post(f"/codec/{op}", content=body, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return list(json_format.Parse(answer.content, Payloads()).payloads)


async def test_codec_decodes_only_the_callers_org_and_a_worker_runs_on_org_keys(
    temporal_env: WorkflowEnvironment, api: httpx.AsyncClient, hub: Hub, admin_key: str, task_queue: str
) -> None:
    async with hub.db.session() as s:
        other_admin = await create_key(s, "globex", "admin")
    client = await _org_client(temporal_env, hub)
    wid = f"opportunity/acme/{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[Echo], activities=[echo],
                      workflow_runner=UnsandboxedWorkflowRunner()):  # a trivial stand-in workflow
        assert await client.execute_workflow(Echo.run, SECRET, id=wid, task_queue=task_queue) == SECRET.upper()
    history = await client.get_workflow_handle(wid).fetch_history()
    sealed = _payloads(history)
    assert len(sealed) >= 4  # input, activity input and result, workflow result
    assert {p.metadata[ORG_METADATA] for p in sealed} == {b"acme"}
    assert all(b"Falcon" not in p.data and b"FALCON" not in p.data for p in sealed)

    stolen = await _codec(api, "decode", other_admin, sealed)
    assert stolen == sealed  # org B's admin gets them back still sealed
    mine = await _codec(api, "decode", admin_key, sealed)
    texts = {json.loads(p.data) for p in mine}
    assert SECRET in texts and SECRET.upper() in texts

    # the Temporal UI's codec setting also encodes (e.g. a signal typed in the UI) for the admin's own org
    encoded = await _codec(api, "encode", admin_key, [Payload(metadata={"encoding": b"json/plain"}, data=b'"hi"')])
    assert encoded[0].metadata[ORG_METADATA] == b"acme"
    assert (await _codec(api, "decode", admin_key, encoded))[0].data == b'"hi"'
    assert await _codec(api, "decode", other_admin, encoded) == encoded


async def test_org_binding_legacy_payloads_and_shredding(hub: Hub) -> None:
    codec = EncryptionCodec(hub.vault, hub.keyring, org="acme")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"opp input"')
    [sealed] = await codec.encode([plain])

    moved = Payload()
    moved.CopyFrom(sealed)
    moved.metadata[ORG_METADATA] = b"globex"  # claim another org: the org is bound to the ciphertext
    await EncryptionCodec(hub.vault, hub.keyring, org="globex").encode([plain])  # globex has a key too
    with pytest.raises(VaultError):
        await codec.decode([moved])

    [legacy] = await EncryptionCodec(hub.vault).encode([plain])  # as payloads were sealed before org keys
    assert ORG_METADATA not in legacy.metadata
    assert await codec.decode([legacy]) == [plain]  # workers still open them
    assert await codec.decode_for("acme", [legacy]) == [legacy]  # not attributable to an org: /codec keeps them

    assert await hub.keyring.shred("acme") == 1
    elsewhere = EncryptionCodec(hub.vault, OrgKeyring(hub.db, hub.vault))  # another process, fresh cache
    for reader in (codec, elsewhere):
        with pytest.raises(VaultError, match="unknown or shredded"):
            await reader.decode([sealed])
    assert await codec.decode_for("acme", [sealed]) == [sealed]


async def test_webhook_workflows_belong_to_their_connections_org(hub: Hub) -> None:
    from tests.connectors.support import seed_connection

    conn = await seed_connection(hub, "https://idp.example", org_id="globex")
    assert await hub.keyring.org_of(f"webhook/stripe/{conn.id}/evt_1#2") == "globex"
    assert await hub.keyring.org_of("webhook/stripe/con_unknown/evt_1") is None
    assert await hub.keyring.org_of("sync/acme/con_1/invoices-2026-01-01T00:00:00Z") == "acme"
    assert await hub.keyring.org_of("run-123") is None


async def test_kept_histories_replay_with_the_per_org_converter(hub: Hub) -> None:
    vault = Vault(parse_keys(HISTORY_VAULT_KEYS))
    replayer = Replayer(workflows=[OpportunityWorkflow],
                        data_converter=data_converter(vault, OrgKeyring(hub.db, vault)))
    files = sorted(Path(HISTORIES).glob("opportunity-*.json"))
    assert files
    for path in files:
        doc = json.loads(path.read_text())
        await replayer.replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))


def test_deleting_an_org_from_the_cli_revokes_its_keys_and_shreds_its_data_key(
    cli_env: Path, temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import asyncio

    from typer.testing import CliRunner

    from app.cli import app as cli
    from hub.settings import Settings, get_settings
    from hub.store import Database

    monkeypatch.setenv("HUB_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "create", "--org", "acme", "--role", "admin"]).exit_code == 0
    settings = Settings()

    async def with_keyring(fn):
        db = Database(settings.resolved_database_url)
        vault = Vault.from_settings(settings)
        try:
            return await fn(EncryptionCodec(vault, OrgKeyring(db, vault), org="acme"))
        finally:
            await db.dispose()

    async def seal(codec: EncryptionCodec) -> Payload:
        return (await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')]))[0]

    sealed = asyncio.run(with_keyring(seal))
    assert runner.invoke(cli, ["orgs", "delete", "acme"]).exit_code == 1  # needs --yes
    done = runner.invoke(cli, ["orgs", "delete", "acme", "--yes"])
    assert done.exit_code == 0 and "revoked 1 API keys, shredded 1 data keys" in done.stdout
    assert "org acme: deleted" in done.stdout  # and its Temporal work stopped (test_deleting_an_org_stops_…)
    assert runner.invoke(cli, ["orgs", "delete", "a/b", "--yes"]).exit_code == 1
    monkeypatch.setenv("HUB_TEMPORAL_ADDRESS", "127.0.0.1:9")  # nothing listens: keys done, says to run it again
    get_settings.cache_clear()
    again = runner.invoke(cli, ["orgs", "delete", "acme", "--yes"])
    assert again.exit_code == 1 and "run this again when it is up" in again.stderr

    async def reopen(codec: EncryptionCodec) -> None:
        with pytest.raises(VaultError, match="shredded"):
            await codec.decode([sealed])

    asyncio.run(with_keyring(reopen))


async def test_the_temporal_ui_may_call_the_codec_from_its_origin_only(api: httpx.AsyncClient, admin_key: str) -> None:
    ui, stranger = "http://127.0.0.1:8233", "https://evil.example"
    preflight = await api.options("/codec/decode", headers={"Origin": ui, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == ui
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    body = json_format.MessageToJson(Payloads(payloads=[]))
    answer = await api.post("/codec/decode", content=body, headers={**bearer(admin_key), "Origin": ui})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ui
    for response in (await api.options("/codec/decode", headers={"Origin": stranger}),
                     await api.post("/codec/decode", content=body, headers={**bearer(admin_key), "Origin": stranger})):
        assert "access-control-allow-origin" not in response.headers


async def test_deleting_an_org_stops_its_schedules_and_workflows_and_nothing_of_others(client: Client) -> None:
    from temporalio.client import Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec

    from app.org_removal import stop_org_work

    org, other, queue = f"doomed{uuid.uuid4().hex[:6]}", None, f"nowhere-{uuid.uuid4().hex[:6]}"
    other = f"{org}2"  # an org whose id starts with the deleted one's
    runs = {wid: await client.start_workflow("Idle", id=wid, task_queue=queue) for wid in (
        f"opportunity/{org}/o1", f"connection/{org}/c1", f"sync/{org}/c1/m", f"ai-retrain/{org}-2026-12-03T09:00:00Z",
        f"opportunity/{other}/o1", f"ai-retrain/{other}-2026-12-03T09:00:00Z")}
    every = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=7))])
    for sid in (f"rule/{org}/weekly", f"ai-retrain/{org}", f"ai-retrain/{other}", f"rule/{other}/weekly"):
        await client.create_schedule(sid, Schedule(action=ScheduleActionStartWorkflow(
            "Idle", id=sid, task_queue=queue), spec=every))
    try:
        assert await stop_org_work(client, org) == (2, 4)
        for wid, handle in runs.items():
            status = (await handle.describe()).status.name
            assert status == ("RUNNING" if other in wid else "TERMINATED"), wid
        for sid in (f"rule/{org}/weekly", f"ai-retrain/{org}"):  # described, not listed: the list lags deletes
            with pytest.raises(RPCError) as gone:
                await client.get_schedule_handle(sid).describe()
            assert gone.value.status == RPCStatusCode.NOT_FOUND, sid
        for sid in (f"ai-retrain/{other}", f"rule/{other}/weekly"):
            await client.get_schedule_handle(sid).describe()  # the other org's are still there
        assert await stop_org_work(client, org) == (0, 0)  # again: nothing left
    finally:
        await stop_org_work(client, other)
