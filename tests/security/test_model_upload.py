"""Issue 13, finding 3: a model upload cannot blow up the API process.

The attack: an org admin posts a ~200 KB gzip that inflates to 200 MB of CSV to ``POST /v1/ai/models``
(before: the whole file was inflated and parsed in the API process, 384 MB → 8.9 GB). Now the upload is
inflated as a stream up to a cap (413), rows and columns are capped (422), and training runs as a Temporal
activity on its own task queue, in a child process; the API answers 202 with a job.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from activities.ai_types import ai_training_queue, ai_training_workflow_id
from ai.tabular import DataError
from ai.upload import UploadTooLarge, inflate
from hub.runtime import Hub
from hub.settings import Settings
from hub.store.ai import AiModel, AiTrainingJob
from tests.ai.synthetic import LEAD_HEADER, lead_rows, to_csv
from tests.ai.training import finished_job, training_workers
from tests.conftest import bearer

CAP = 1024 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A 1 MiB decompressed cap, 500 rows and 20 columns: small enough to cross in a test."""
    return settings.model_copy(update={"ai_upload_max_bytes": CAP, "ai_upload_max_rows": 500,
                                       "ai_upload_max_columns": 20})


def gzip_bomb(size: int, members: int = 1) -> bytes:
    """``members`` gzip members that together inflate to ``size`` bytes of a valid-looking lead CSV."""
    line = b"x,Google,Unemployed,0,0,Finance,1\n"
    chunk = line * (64 * 1024 // len(line))
    out = []
    for _ in range(members):
        packer = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
        parts = [packer.compress(b"Prospect ID,Lead Source,Occupation,TotalVisits,Time,Specialization,Converted\n")]
        for _ in range(size // members // len(chunk)):
            parts.append(packer.compress(chunk))
        out.append(b"".join(parts) + packer.flush())
    return b"".join(out)


async def upload(api: httpx.AsyncClient, key: str, data: bytes, name: str = "leads.csv.gz") -> httpx.Response:
    return await api.post("/v1/ai/models", headers=bearer(key), data={"kind": "leads"},
                          files={"file": (name, data, "application/gzip")})


async def nothing_stored(hub: Hub) -> bool:
    async with hub.db.session() as session:
        return not (await session.scalar(select(func.count()).select_from(AiTrainingJob))
                    or await session.scalar(select(func.count()).select_from(AiModel)))


async def test_a_gzip_bomb_is_413_without_inflating_it(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    bomb = gzip_bomb(200 * 1024 * 1024)
    assert len(bomb) < hub.settings.max_body_bytes  # accepted by the request size limit
    tracemalloc.start()
    try:
        answer = await upload(api, admin_key, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == f"file: the CSV is larger than {CAP} bytes once decompressed"
    assert peak < 6 * CAP  # the cap and the buffers around it, never the 200 MB
    assert await nothing_stored(hub)


async def test_many_small_members_and_plain_files_count_together(api: httpx.AsyncClient, hub: Hub,
                                                                 admin_key: str) -> None:
    members = await upload(api, admin_key, gzip_bomb(8 * CAP, members=16))  # each member is half the cap
    assert members.status_code == 413
    with pytest.raises(UploadTooLarge):
        inflate(b"a" * (CAP + 1), CAP)
    assert inflate(gzip.compress(b"a,b\n") + gzip.compress(b"1,2\n"), CAP) == b"a,b\n1,2\n"
    with pytest.raises(DataError, match="truncated"):
        inflate(gzip.compress(b"a,b\n1,2\n" * 100)[:-20], CAP)
    broken = await upload(api, admin_key, b"\x1f\x8b" + b"not gzip at all")
    assert broken.status_code == 422 and "not valid gzip data" in broken.json()["detail"]
    assert await nothing_stored(hub)


async def test_rows_and_columns_are_capped(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    rows = await upload(api, admin_key, gzip.compress(to_csv(lead_rows(501), LEAD_HEADER)))
    assert rows.status_code == 422
    assert rows.json()["detail"] == "file: the CSV has more than 500 rows; at most that many are accepted"
    wide = ",".join(f"c{i}" for i in range(21)).encode() + b"\n"
    columns = await upload(api, admin_key, wide + b"1\n", name="wide.csv")
    assert columns.status_code == 422
    assert columns.json()["detail"] == "file: the CSV has 21 columns; at most 20 are accepted"
    ragged = await upload(api, admin_key, b"a,b\n" + b"1," * 30 + b"\n", name="ragged.csv")
    assert ragged.status_code == 422 and "row 2 has 31 cells" in ragged.json()["detail"]
    assert await nothing_stored(hub)


async def test_training_runs_as_a_job_on_its_own_queue(api: httpx.AsyncClient, hub: Hub, client: Client,
                                                       admin_key: str) -> None:
    async with training_workers(hub, client):
        answer = await upload(api, admin_key, gzip.compress(to_csv(lead_rows(300), LEAD_HEADER)))
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["location"] == f"/v1/ai/models/jobs/{job['id']}"
        assert job["status"] == "queued" and job["rows"] == 300 and job["columns"] == len(LEAD_HEADER) + 1
        done = await finished_job(api, admin_key, answer.headers["location"])
        leaky = await api.post("/v1/ai/models", headers=bearer(admin_key),
                               data={"kind": "leads", "mapping": '{"features": ["Lead Source", "Lead Quality"]}'},
                               files={"file": ("l.csv", to_csv(lead_rows(300), LEAD_HEADER), "text/csv")})
        failed = await finished_job(api, admin_key, leaky.headers["location"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    model = (await api.get(f"/v1/ai/models/{done['model_id']}", headers=bearer(admin_key))).json()
    assert model["active"] and model["metrics"]["rows"] == 300
    assert failed["status"] == "failed" and failed["model_id"] is None
    assert failed["error"] == "cannot train on this file: leakage columns can never be features: Lead Quality"
    history = await client.get_workflow_handle(ai_training_workflow_id("acme", job["id"])).fetch_history()
    scheduled = [e.activity_task_scheduled_event_attributes for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert [s.task_queue.name for s in scheduled] == [ai_training_queue(hub.settings.task_queue)]
    assert scheduled[0].priority.fairness_key == "org:acme"  # the queue serves orgs in turn, not in upload order
    async with hub.db.session() as session:
        kept = await session.scalar(select(AiTrainingJob.upload).where(AiTrainingJob.id == job["id"]))
    assert kept is None  # the file is not kept once trained
    other = await api.get(answer.headers["location"], headers=bearer(await other_admin(hub)))
    assert other.status_code == 404


async def other_admin(hub: Hub) -> str:
    from hub.auth import create_key

    async with hub.db.session() as session:
        return await create_key(session, "globex", "admin")


async def test_an_org_has_at_most_its_cap_of_training_jobs_queued_or_running(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    data = gzip.compress(to_csv(lead_rows(50), LEAD_HEADER))  # no training worker: the jobs stay queued
    first, second = await upload(api, admin_key, data), await upload(api, admin_key, data)
    assert (first.status_code, second.status_code) == (202, 202)
    third = await upload(api, admin_key, data)
    assert third.status_code == 429 and "2 training jobs queued or running" in third.json()["detail"]
    assert third.headers["retry-after"]
    assert (await upload(api, await other_admin(hub), data)).status_code == 202  # another org has its own cap
    async with hub.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(AiTrainingJob)) == 3  # nothing stored for it
        job = await session.get(AiTrainingJob, first.json()["id"])
        job.status = "failed"  # one ended: room again
    assert (await upload(api, admin_key, data)).status_code == 202
