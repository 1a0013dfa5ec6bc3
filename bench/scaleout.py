"""Benchmark: per-connection budgets under contention, and actions/s with 1 → 3 worker processes.

Ten connections of one provider (each its own account at a fake OAuth2 provider, each with a budget of R
requests/s through ``config.rate_limit``) all have a backlog at once: ``--per`` actions each, run by
``fulqrun-hub worker`` processes on PostgreSQL (``HUB_BENCH_POSTGRES_URL``, default the local test database)
and one Temporal dev server with fairness on. The fake runs in its own process and stamps every request with
its own clock. Printed per worker count: actions/s over the whole run, each connection's achieved rate ÷ R
(its share under contention) and its busiest one-second window.

    .venv/bin/python bench/scaleout.py [--connections 10] [--rate 2] [--per 30] [--workers 1 3]

The last line is ``ratio=<x>``: the worst connection's achieved rate ÷ its budget R with the most workers
(target ≥ 0.9; no connection above R in any one-second window).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from sqlalchemy import text
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.connector_types import (
    ACTION_RETRY,
    INTERACTIVE_PRIORITY,
    RUN_ACTION,
    ActionCall,
    ActionResult,
    provider_priority,
    provider_task_queue,
)
from app.runner import temporal_cli
from bench.connectors import achieved, busiest_second
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.temporal import data_converter, dev_server_args
from hub.vault import Vault, new_key_line, parse_keys
from tests.connectors.support import CLIENT_ID, CLIENT_SECRET, seed_connection
from tests.fakes.oauth_server import OAuthFake

POSTGRES = os.environ.get("HUB_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
HUB_BIN = str(Path(sys.executable).parent / "fulqrun-hub")


@workflow.defn(sandboxed=False)
class Backlog:
    """One connection's backlog: every action at once, on the hub's provider queue (``hub_queue``)."""

    @workflow.run
    async def run(self, hub_queue: str, calls: list[ActionCall]) -> int:
        await asyncio.gather(*(workflow.execute_activity(
            RUN_ACTION, call, task_queue=provider_task_queue(hub_queue, "generic_oauth2"),
            start_to_close_timeout=timedelta(minutes=2), retry_policy=ACTION_RETRY, result_type=ActionResult,
            priority=provider_priority(call.org_id, call.connection_id, INTERACTIVE_PRIORITY)) for call in calls))
        return len(calls)


def serve_fake(pipe) -> None:
    """The fake provider in its own process: tokens on request, then every API request's (time, path)."""
    fake = OAuthFake().start()
    fake.register_client(CLIENT_ID, CLIENT_SECRET)
    pipe.send(fake.url)
    while (command := pipe.recv()) != "stop":
        pipe.send(fake.issue(CLIENT_ID) if command == "issue"
                  else [(t, p) for t, p in fake.arrivals if p.startswith("/api/")])
    fake.stop()


async def one_round(client: Client, hub: Hub, fake, fake_url: str, env: dict, workers: int,
                    connections: int, rate: float, per: int) -> tuple[float, dict[str, float], dict[str, int]]:
    """Start ``workers`` worker processes, run every connection's backlog, stop them; per-connection figures."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    conns = []
    for _ in range(connections):
        fake.send("issue")
        access, refresh = fake.recv()
        conns.append(await seed_connection(hub, fake_url, access_token=access, refresh_token=refresh,
                                           config={"rate_limit": {"per_second": rate}}))
    procs = [subprocess.Popen([HUB_BIN, "worker"], env={**env, "HUB_TASK_QUEUE": queue},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        await asyncio.sleep(8)  # the workers start and configure the provider queues
        async with Worker(client, task_queue=f"{queue}-driver", workflows=[Backlog]):
            started = time.monotonic()
            await asyncio.gather(*(client.execute_workflow(
                Backlog.run, args=[queue, [ActionCall(org_id=c.org_id, action="generic_oauth2.request",
                                                      connection_id=c.id, params={"path": f"/{c.id}/{n}"})
                                           for n in range(per)]],
                id=f"backlog-{uuid.uuid4()}", task_queue=f"{queue}-driver") for c in conns))
            elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    fake.send("arrivals")
    arrivals = fake.recv()
    shares, busiest = {}, {}
    for c in conns:
        times = [t for t, path in arrivals if path.startswith(f"/api/{c.id}/")]
        shares[c.id], busiest[c.id] = achieved(times) / rate, busiest_second(times)
    return connections * per / elapsed, shares, busiest


async def main(connections: int, rate: float, per: int, worker_counts: list[int]) -> float:
    pipe, child = multiprocessing.Pipe()
    fake_proc = multiprocessing.get_context("spawn").Process(target=serve_fake, args=(child,))
    fake_proc.start()
    fake_url = pipe.recv()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = Database(POSTGRES)
    async with admin.engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}options=-csearch_path%3D{schema}"
    db = Database(url)
    await db.migrate()
    keys = new_key_line("b1")
    temporal = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(),
                                                     dev_server_extra_args=["--log-level", "error", *dev_server_args()])
    ratio = 0.0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            address = temporal.client.service_client.config.target_host
            env = {**os.environ, "HUB_DATABASE_URL": url, "HUB_VAULT_KEYS": keys, "HUB_TEMPORAL_ADDRESS": address,
                   "HUB_DATA_DIR": tmp, "HUB_HTTP_ALLOWLIST": '["127.0.0.0/8"]', "HUB_LOG_LEVEL": "WARNING",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            client = await Client.connect(address, data_converter=data_converter(Vault(parse_keys(keys))))
            settings = Settings(data_dir=Path(tmp), vault_keys=keys)
            hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
            print(f"{connections} connections × {per} actions, each connection's budget R = {rate:g} req/s "
                  f"(drawn at 0.95 R); fake provider in its own process")
            for workers in worker_counts:
                rate_all, shares, busiest = await one_round(client, hub, pipe, fake_url, env, workers, connections,
                                                           rate, per)
                worst = min(shares.values())
                print(f"{workers} worker process(es): {rate_all:.1f} actions/s; share of R per connection "
                      f"min {worst:.3f} median {sorted(shares.values())[len(shares) // 2]:.3f} "
                      f"max {max(shares.values()):.3f}; busiest 1-s window max {max(busiest.values())} (R = {rate:g})")
                ratio = worst
    finally:
        pipe.send("stop")
        fake_proc.join(timeout=10)
        await temporal.shutdown()
        await db.dispose()
        async with admin.engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="each connection's budget R, requests/s")
    parser.add_argument("--per", type=int, default=30, help="actions per connection")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    print(f"ratio={asyncio.run(main(args.connections, args.rate, args.per, args.workers)):.3f}")
