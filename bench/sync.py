"""Benchmark: a sync of 10,000 records through a fake provider limited to R requests/s, page size P.

The real path end to end — a ``SyncWorkflow`` on the Temporal dev server (workers configured as
``worker.py`` configures them), its ``sync.fetch_segment`` activity on the provider's task queue requesting
the ``stripe.customers`` model over HTTP at the connection's budget (headroom × R) and upserting each page
into SQLite — against the Stripe fake holding N customers in its own
process (as a provider is), answering 429 to any request above R in a one-second window. The baseline is
R itself (the provider's limit); the run also reports how close the sync came to the rate it was given
(headroom × R), the busiest one-second window, the 429s, records/s and the process's peak memory.

    .venv/bin/python bench/sync.py [--records 10000] [--rate 5] [--page-size 100] [--headroom 0.95]

The last line is ``ratio=<x>``: achieved requests/s ÷ R (target ≥ 0.9, never above R: busiest window ≤ R
and no 429).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from app.runner import temporal_cli
from bench.connectors import achieved, busiest_second
from connectors.catalogue import RateLimit
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.temporal import data_converter, dev_server_args
from hub.vault import Vault, new_key_line, parse_keys
from tests.fakes.stripe_server import StripeFake
from tests.sync.support import record_count, run_sync, seed_connection, sync_workers

MODEL = "stripe.customers"


class LimitedStripe(StripeFake):
    """The Stripe fake with the provider's limit: 429 + ``Retry-After: 1`` above ``limit`` requests in any
    one-second window; ``served`` holds the arrival time of every request it answered."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.served: list[float] = []
        self.throttled = 0
        self._recent: collections.deque[float] = collections.deque()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.limit:
                self.throttled += 1
                await self.rate_limit_error(1)(scope, receive, send)
                return
            self._recent.append(now)
            self.served.append(now)
        await super().__call__(scope, receive, send)


def serve_provider(records: int, rate: float, pipe) -> None:  # a multiprocessing Connection
    """In its own process (as a real provider is): serve ``records`` customers at ``rate``; report at the end."""
    with LimitedStripe(rate) as fake:
        fake.seed_customers(records)
        pipe.send(fake.url)
        pipe.recv()  # "stop"
        pipe.send((fake.served, fake.throttled))


def rss_mb() -> float:
    """The process's resident memory now, MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def main(records: int, rate: float, page_size: int, headroom: float) -> float:
    parent, child = multiprocessing.Pipe()
    provider = multiprocessing.get_context("spawn").Process(target=serve_provider, args=(records, rate, child))
    provider.start()
    try:
        url = parent.recv()
        with tempfile.TemporaryDirectory() as tmp:
            summary, elapsed, stored, rss_before = await sync_through(url, Path(tmp), rate, page_size, headroom)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        parent.send("stop")
        served, throttled = parent.recv()
    finally:
        provider.join(timeout=10)
        if provider.is_alive():
            provider.terminate()
    given = rate * headroom
    rate_hub = achieved(served)
    print(f"fake provider (own process): {records} customers, limit R = {rate:g} req/s; sync given {headroom:g} × R "
          f"= {given:g} req/s, page size {page_size}")
    print(f"requests: {len(served)} served at {rate_hub:.2f} req/s = {rate_hub / given:.3f} of the rate given; "
          f"busiest 1-s window {busiest_second(served)} (limit {rate:g}); 429s: {throttled}")
    print(f"records: {summary.records} fetched, {stored} stored in {elapsed:.1f} s = "
          f"{summary.records / elapsed:.0f} records/s ({summary.pages} pages)")
    print(f"memory (hub process: worker, workflow, store): peak RSS {peak:.0f} MB, {rss_before:.0f} MB before the sync")
    if stored != records or throttled or busiest_second(served) > rate:
        print("FAILED: records missing, or the provider's limit was exceeded")
    return rate_hub / rate


async def sync_through(url: str, tmp: Path, rate: float, page_size: int, headroom: float):
    """Run the sync against the provider at ``url``: (summary, seconds, records stored, RSS before, MB)."""
    keys = new_key_line("b1")
    settings = Settings(data_dir=tmp, vault_keys=keys, task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                        http_allowlist=["127.0.0.1/32"])
    db = Database(f"sqlite+aiosqlite:///{tmp / 'hub.db'}")
    await db.migrate()
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(),
                                                dev_server_extra_args=["--log-level", "error", *dev_server_args()])
    try:
        client = await Client.connect(env.client.service_client.config.target_host,
                                      data_converter=data_converter(Vault(parse_keys(keys))))
        hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
        hub.use_client(client)
        conn = await seed_connection(hub, "stripe", base_url=url)
        rss_before = rss_mb()
        async with sync_workers(client, hub, "stripe", limit=RateLimit(per_second=rate, headroom=headroom)):
            started = time.monotonic()
            summary = await run_sync(client, hub, conn, MODEL, workflow_id=f"bench-{uuid.uuid4().hex[:8]}",
                                     page_size=page_size)
            elapsed = time.monotonic() - started
        return summary, elapsed, await record_count(hub, conn), rss_before
    finally:
        await env.shutdown()
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=5.0, help="the fake provider's limit R, requests/s")
    parser.add_argument("--page-size", type=int, default=100, help="P, records per page (Stripe: at most 100)")
    parser.add_argument("--headroom", type=float, default=0.95,
                        help="the share of R the sync is given (catalogue rate_limit.headroom)")
    args = parser.parse_args()
    ratio = asyncio.run(main(args.records, args.rate, args.page_size, args.headroom))
    print(f"ratio={ratio:.3f}")
