"""The Maven proof at full size: the whole CRM history imported into PostgreSQL through the API, then the org's
retraining run as its Temporal Schedule runs it; is the promoted model ever worse than the base rate?

A hub process (API + worker, as ``fulqrun-hub run`` builds them) on a fresh PostgreSQL schema and a Temporal dev
server started here. The 8,800 Maven opportunities (``$HUB_SHARED_DATA/maven_crm_sales_opportunities``) are
imported as a CRM would (``tests/ai/maven.py``): ``PUT /v1/opportunities/{id}`` at the final stage, dated with
``engaged_at`` / ``closed_at``, then ``POST …:close-lost`` for the lost ones; ``--concurrency`` at a time, a 503 or
a transport error retried, backing off. The org's AI insights are off during the import, as in the slow test.
When every projection holds its outcome, ``PUT /v1/ai/retraining`` creates the org's schedule and
``POST /v1/ai/retraining:run`` triggers it (``AiRetrainWorkflow`` → ``ai.retrain`` on the training queue); the
retrained deal model's ``metrics.challenge`` is read back through ``GET /v1/ai/models``.

With ``--champion``, before the import the org uploads (``POST /v1/ai/models``) a deal model trained on the
CRM's own export of the deals that closed before ``--champion-until`` (default 2017-11-03: before the newest
window), as an org that brought its model along: the retraining then has a champion to beat.

    nice -n 5 .venv/bin/python bench/maven_retrain.py [--limit 8800] [--concurrency 16] [--champion]

Prints rows imported, import time and calls/s, the wait for the projections, the retraining's time, and the
challenge: window, Brier and AUC of challenger and champion against the base rate, promoted or not. Last line
``never_worse=<true|false>``: false only if retraining promoted a model not better than the base rate on the window.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # a script: the repository root comes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from activities.ai_retraining import opportunity_outcomes
from app.runner import temporal_cli
from bench.transitions import free_port, peak_rss_mb, wait_ready
from hub.auth import create_key
from hub.store import Database
from hub.store.resources import apply_resource
from hub.temporal import dev_server_args
from hub.vault import new_key_line
from tests.ai.maven import CLOSE_LOST, PIPELINE, body, maven_rows

ORG = "maven"
POSTGRES = os.environ.get("HUB_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATA = Path(os.environ.get("HUB_SHARED_DATA", "../shared/data")) / "maven_crm_sales_opportunities"
RETRIES = 6


async def prepare(url: str) -> str:
    """Schema migrated, the org with an admin key and the Maven pipeline, before the hub process starts."""
    db = Database(url)
    await db.migrate()
    async with db.session() as session:
        key = await create_key(session, ORG, "admin", name="maven-import")
        await apply_resource(session, ORG, PIPELINE, actor="bench")
    await db.dispose()
    return key


async def settle(url: str, rows: list[dict], timeout: float) -> tuple[Counter, float]:
    """Wait until every opportunity's projection holds its outcome; (outcomes counted, seconds waited)."""
    db, began = Database(url), time.perf_counter()
    wanted = Counter({"Won": "won", "Lost": "lost"}.get(r["deal_stage"], "open") for r in rows)
    try:
        while True:
            async with db.session() as session:
                outcomes = await opportunity_outcomes(session, ORG)
            counts = Counter("open" if o.won is None else "won" if o.won else "lost" for o in outcomes)
            waited = time.perf_counter() - began
            if counts == wanted or waited > timeout:
                return counts, waited
            await asyncio.sleep(2)
    finally:
        await db.dispose()


def champion_csv(until: str) -> bytes:
    """The CRM's export of its deals closed on or before ``until`` (and none after): the champion's training set."""
    rows = [r for r in maven_rows(DATA) if r["deal_stage"] in ("Won", "Lost") and r["close_date"] <= until]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[k for k in rows[0] if k != "price"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


async def wait_for(http: httpx.AsyncClient, path: str, done: Callable[[Any], Any], timeout: float = 1800) -> Any:
    """Poll ``GET path`` until ``done(json)`` gives a value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await http.get(path)
        answer.raise_for_status()
        if (found := done(answer.json())) is not None:
            return found
        await asyncio.sleep(2)
    raise SystemExit(f"timed out waiting on {path}")


async def upload_champion(http: httpx.AsyncClient, until: str) -> dict:
    files = {"file": ("maven-export.csv", champion_csv(until), "text/csv")}
    job = await http.post("/v1/ai/models", data={"kind": "deals"}, files=files)
    assert job.status_code == 202, job.text
    done = await wait_for(http, f"/v1/ai/models/jobs/{job.json()['id']}",
                          lambda j: j if j["status"] in ("succeeded", "failed") else None)  # fmt: skip
    assert done["status"] == "succeeded", done
    return done


async def import_rows(http: httpx.AsyncClient, rows: list[dict], concurrency: int) -> tuple[int, int, int]:
    """Every row registered (and closed lost); (calls, retries, failures)."""
    calls = retries = failures = 0
    queue = list(reversed(rows))

    async def send(method: str, path: str, payload: dict) -> bool:
        nonlocal calls, retries, failures
        calls += 1
        for attempt in range(RETRIES + 1):
            try:
                answer = await http.request(method, path, json=payload)
            except httpx.TransportError:
                answer = None
            if answer is not None and (answer.status_code == 200 or "already_closed" in answer.text):
                return True  # already closed: a retried close-lost whose first attempt closed it
            if answer is not None and answer.status_code < 500 or attempt == RETRIES:
                print(f"  {method} {path}: {answer.status_code if answer else 'transport error'} "
                      f"{answer.text[:200] if answer else ''}", file=sys.stderr)  # fmt: skip
                failures += 1
                return False
            retries += 1
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
        return False

    async def importer() -> None:
        while queue:
            row = queue.pop()
            path = f"/v1/opportunities/{row['opportunity_id']}"
            if await send("PUT", path, body(row)) and row["deal_stage"] == "Lost":
                await send("POST", f"{path}:close-lost", CLOSE_LOST)

    await asyncio.gather(*(importer() for _ in range(concurrency)))
    return calls, retries, failures


async def retrain(http: httpx.AsyncClient) -> dict:
    """Trigger the org's schedule once; the challenge of the deal model it stored."""
    assert (await http.put("/v1/ai/retraining", json={"every_hours": 168})).status_code == 200
    assert (await http.post("/v1/ai/retraining:run")).status_code == 202
    return await wait_for(http, "/v1/ai/models?kind=deals",
                          lambda ms: next((m for m in ms if m["origin"] == "retrain"), None))  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def temporal_pid(marker: str) -> int:
    """The dev server's pid: the process whose command line names ``marker`` (its database file)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                return int(entry.name)
        except OSError:
            continue
    raise SystemExit("Temporal dev server process not found")


def show(name: str, brier: float | None, auc: float | None) -> str:
    return f"{name} Brier {brier} AUC {auc}" if brier is not None else f"{name}: none"


async def drive(args: argparse.Namespace) -> None:
    rows = maven_rows(DATA, args.limit if args.limit < 8800 else None)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = Database(POSTGRES)
    async with admin.engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}options=-csearch_path%3D{schema}"
    proc = None
    with tempfile.TemporaryDirectory(prefix="bench-maven-") as tmp:
        temporal = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(), dev_server_database_filename=str(Path(tmp) / "temporal.db"),
            dev_server_extra_args=["--log-level", "error", *dev_server_args()])  # fmt: skip
        try:
            key = await prepare(url)
            port = free_port()
            env = {**os.environ, "HUB_DATA_DIR": tmp, "HUB_DATABASE_URL": url, "HUB_VAULT_KEYS": new_key_line("b"),
                   "HUB_TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
                   "HUB_API_PORT": str(port), "HUB_TASK_QUEUE": "maven", "HUB_LOG_LEVEL": "WARNING"}  # fmt: skip
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("transitions.py")), "--serve-hub"],
                                    env=env)  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base, proc)
            print(f"hub pid {proc.pid}; PostgreSQL schema {schema}; {len(rows)} Maven opportunities "
                  f"{dict(Counter(r['deal_stage'] for r in rows))}, {args.concurrency} at a time; "
                  f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
            limits = httpx.Limits(max_connections=args.concurrency + 4)
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
                assert (await http.patch(f"/v1/orgs/{ORG}", json={"flags": {"ai.insights": False}})).status_code == 200
                if args.champion:
                    job = await upload_champion(http, args.champion_until)
                    print(f"champion: {job['rows']} deals closed by {args.champion_until} uploaded, model "
                          f"{job['model_id']}")  # fmt: skip
                server = temporal_pid(str(Path(tmp) / "temporal.db"))
                began, cpu = time.perf_counter(), (cpu_seconds(proc.pid), cpu_seconds(server))
                calls, retries, failures = await import_rows(http, rows, args.concurrency)
                took = time.perf_counter() - began
                print(f"imported {len(rows)} opportunities ({calls} calls) in {took:.0f} s = {len(rows) / took:.1f} "
                      f"opportunities/s, {calls / took:.1f} calls/s; retried {retries}, failed {failures}; "
                      f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
                counts, waited = await settle(url, rows, args.settle_timeout)
                hub_cpu, server_cpu = cpu_seconds(proc.pid) - cpu[0], cpu_seconds(server) - cpu[1]
                print(f"projections after {waited:.0f} s more: {dict(counts)}; CPU per opportunity: hub "
                      f"{1000 * hub_cpu / len(rows):.0f} ms, Temporal server {1000 * server_cpu / len(rows):.0f} ms")
                began = time.perf_counter()
                model = await retrain(http)
                challenge = model["metrics"]["challenge"]
                print(f"retrained in {time.perf_counter() - began:.0f} s (model {model['id']}): "
                      f"{challenge['train_rows']} closed deals before the window, {challenge['window_rows']} "
                      f"snapshots closing {challenge['window_from']}…{challenge['window_until']}")  # fmt: skip
                print(f"{show('challenger', challenge['challenger_brier'], challenge.get('challenger_auc'))}; "
                      f"{show('champion', challenge['champion_brier'], challenge.get('champion_auc'))}; "
                      f"base rate Brier {challenge['base_rate_brier']}; promoted {challenge['promoted']} "
                      f"({challenge['reason']})")  # fmt: skip
                print(f"hub peak RSS {peak_rss_mb(proc.pid):.0f} MiB; load {os.getloadavg()[0]:.1f}")
                worse = challenge["promoted"] and challenge["challenger_brier"] >= challenge["base_rate_brier"]
                print(f"never_worse={str(not worse).lower()}")
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await temporal.shutdown()
            if not args.keep_schema:
                async with admin.engine.begin() as conn:
                    await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            await admin.dispose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=8800, help="opportunities (every k-th row below 8,800)")
    parser.add_argument("--concurrency", type=int, default=16, help="opportunities imported at a time")
    parser.add_argument("--settle-timeout", type=float, default=600, help="seconds to wait for the projections")
    parser.add_argument("--champion", action="store_true", help="upload a CSV-trained deal model first")
    parser.add_argument("--champion-until", default="2017-11-03", help="the champion's last close date")
    parser.add_argument("--keep-schema", action="store_true", help="leave the PostgreSQL schema for inspection")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(drive(parse()))
