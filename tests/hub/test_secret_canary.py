"""A canary secret written through the vault is absent from the database, the logs and Temporal history."""

from __future__ import annotations

import base64
import io
import logging
import uuid
from pathlib import Path

import httpx
from google.protobuf import json_format
from pydantic import BaseModel
from sqlalchemy import text
from temporalio import workflow
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.worker import Worker

from hub.logs import json_handler
from hub.runtime import Hub
from hub.store.secrets import get_secret, put_secret
from hub.temporal import data_converter
from tests.conftest import bearer

CANARY = "canary-" + uuid.uuid4().hex


class CarryInput(BaseModel):
    token: str


@workflow.defn(sandboxed=False)
class CarrySecretWorkflow:
    @workflow.run
    async def run(self, inp: CarryInput) -> CarryInput:
        return CarryInput(token=inp.token[::-1][::-1])


async def test_canary_absent_from_db_logs_and_history(
    hub: Hub, client: Client, task_queue: str, api: httpx.AsyncClient,
    admin_key: str,
) -> None:
    logs = io.StringIO()
    handler = json_handler(logs)
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    async with hub.db.session() as s:
        await put_secret(s, hub.vault, "acme", "connection:canary", "access_token", CANARY)
    async with hub.db.session() as s:
        assert await get_secret(s, hub.vault, "connection:canary", "access_token") == CANARY
    logging.getLogger("hub.test").info("refreshing with access_token=%s and Bearer %s", CANARY, CANARY)

    # the hub's converter: an org's workflow (its id names the org) is sealed under the org's data key
    client = Client(client.service_client, namespace="default", data_converter=data_converter(hub.vault, hub.keyring))
    async with Worker(client, task_queue=task_queue, workflows=[CarrySecretWorkflow]):
        handle = await client.start_workflow(
            CarrySecretWorkflow.run, CarryInput(token=CANARY), id=f"opportunity/acme/canary-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        assert (await handle.result()).token == CANARY  # the hub's own client decodes it
    history = await handle.fetch_history()
    assert CANARY.encode() not in history.to_json().encode()
    for event in history.events:
        assert CANARY.encode() not in event.SerializeToString()

    # A plain client (no codec) sees only ciphertext; the codec endpoint decodes for the org's admins only.
    raw = await Client.connect(client.service_client.config.target_host, namespace="default")
    raw_history = await raw.get_workflow_handle(handle.id).fetch_history()
    payload = raw_history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert payload.metadata["encoding"] == b"binary/encrypted"
    body = json_format.MessageToJson(Payloads(payloads=[payload]))
    assert (await api.post("/codec/decode", content=body)).status_code == 401
    decoded = await api.post("/codec/decode", content=body, headers=bearer(admin_key))
    assert decoded.status_code == 200
    assert CANARY in base64.b64decode(decoded.json()["payloads"][0]["data"]).decode()

    if hub.db.is_sqlite:
        await hub.db.dispose()
        db_file = Path(hub.db.url.split("///", 1)[1])
        for path in db_file.parent.glob(db_file.name + "*"):
            assert CANARY.encode() not in path.read_bytes(), path
    else:
        async with hub.db.engine.connect() as conn:
            dump = (await conn.execute(text("SELECT ciphertext FROM secrets"))).scalars().all()
        assert dump and all(CANARY not in row for row in dump)

    root.removeHandler(handler)
    root.setLevel(previous_level)
    captured = logs.getvalue()
    assert "refreshing with access_token=[redacted]" in captured and CANARY not in captured
