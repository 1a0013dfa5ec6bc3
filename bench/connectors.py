"""Benchmark: provider actions through Temporal against a fake provider limited to R requests/s.

500 ``generic_oauth2.request`` actions (5 workflows × 100 concurrent activities) run through the real
path — the provider task queue handing the connection's tasks out at R (fairness key rate), every request
drawn from the connection's budget at the catalogue's headroom × R, ``connector.run_action``, the
connection's token from the vault — against a local OAuth2 fake that answers 429 above R requests in
any one-second window. All actions start on an expired access token, so the run also counts the token
refreshes (single flight: 1). The baseline, measured in the same run, is a direct client paced at
exactly R with no Temporal in between: it shows what the fake serves at R. The fake runs in its own
process so that the hub's work does not delay its clock readings.

    .venv/bin/python bench/connectors.py [--actions 500] [--rate 50] [--headroom 0.95]

The last line is ``ratio=<x>``: the hub's achieved rate / R (target ≥ 0.9, and never above R). The
budget hands out slots evenly at headroom × R, so the ratio cannot exceed the headroom; the rest of R
absorbs the jitter with which requests reach the provider after their slot. A 429 (retried after
Retry-After, which costs the action a second or more) means that jitter was larger.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.connector_types import ActionCall
from app.runner import temporal_cli
from connectors.catalogue import RateLimit, catalogue
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.temporal import data_converter, dev_server_args
from hub.vault import Vault, new_key_line, parse_keys
from tests.connectors.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    RunActions,
    connection_workers,
    seed_connection,
)
from tests.fakes.oauth_server import OAuthFake

WORKFLOWS = 5


def serve_fake(pipe, rate: float) -> None:  # a multiprocessing Connection
    """In a child process (so its clock readings are not delayed by the hub's work): the fake provider,
    driven by commands over ``pipe``."""
    fake = OAuthFake(limit_per_second=rate).start()
    fake.register_client(CLIENT_ID, CLIENT_SECRET)
    pipe.send((fake.url, *fake.issue(CLIENT_ID)))
    while (command := pipe.recv()) != "stop":
        if command == "expire":
            fake.expire_all()
        pipe.send((list(fake.api_times), fake.throttled, list(fake.token_calls)))
    fake.stop()


class FakeProcess:
    """The parent's handle on the child-process fake."""

    def __init__(self, rate: float) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=serve_fake, args=(child, rate))
        self.process.start()
        self.url, self.access, self.refresh = self.pipe.recv()

    def ask(self, command: str) -> tuple[list[float], int, list[str]]:
        """(served API request times, 429 count, token grants) after running ``command``."""
        self.pipe.send(command)
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=10)


def busiest_second(times: list[float]) -> int:
    """The most requests in any one-second window."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def achieved(times: list[float]) -> float:
    """Requests per second between the first and the last request."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def baseline(fake: FakeProcess, n: int, rate: float) -> tuple[float, int]:
    """A direct client paced at exactly ``rate``: what the fake serves when nothing is in between."""
    times, throttled, _ = fake.ask("stats")
    interval, start = 1.0 / rate, time.monotonic()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fake.access}"}) as http:
        async def one(i: int) -> None:
            await asyncio.sleep(max(start + i * interval - time.monotonic(), 0))
            await http.get(f"{fake.url}/api/baseline/{i}")

        await asyncio.gather(*(one(i) for i in range(n)))
    after, throttled_after, _ = fake.ask("stats")
    return achieved(after[len(times):]), throttled_after - throttled


async def main(actions: int, rate: float, headroom: float | None) -> float:
    headroom = headroom or catalogue().get("generic_oauth2").rate_limit.headroom
    limit = RateLimit(per_second=rate, headroom=headroom)
    fake = FakeProcess(rate)
    with tempfile.TemporaryDirectory() as tmp:
        keys = new_key_line("b1")
        settings = Settings(data_dir=Path(tmp), vault_keys=keys, task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                        http_allowlist=["127.0.0.1/32"])
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'hub.db'}")
        await db.migrate()
        env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(),
                                                    dev_server_extra_args=["--log-level", "error", *dev_server_args()])
        try:
            client = await Client.connect(env.client.service_client.config.target_host,
                                          data_converter=data_converter(Vault(parse_keys(keys))))
            hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
            hub.use_client(client)
            base, base_throttled = await baseline(fake, min(actions, int(rate * 4)), rate)
            await asyncio.sleep(1.1)  # let the fake's window empty
            conn = await seed_connection(hub, fake.url, access_token=fake.access, refresh_token=fake.refresh)
            before, throttled_before, _ = fake.ask("expire")
            calls = [ActionCall(org_id="acme", action="generic_oauth2.request", params={"path": f"/bench/{i}"},
                                connection_id=conn.id) for i in range(actions)]
            per = -(-actions // WORKFLOWS)
            async with connection_workers(client, hub, limit=limit):
                started = time.monotonic()
                results = await asyncio.gather(*(
                    client.execute_workflow(RunActions.run, calls[i:i + per], id=f"bench-{uuid.uuid4()}",
                                            task_queue=settings.task_queue)
                    for i in range(0, actions, per)
                ))
                elapsed = time.monotonic() - started
            times, throttled, grants = fake.ask("stats")
            failures = [r for batch in results for r in batch if isinstance(r, str)]
            served = times[len(before):]
            rate_hub = achieved(served)
            print(f"fake provider (own process) limit R = {rate:g} req/s; the connection's budget draws requests "
                  f"at {headroom:g} × R = {limit.queue_per_second:g}/s")
            print(f"baseline (direct client paced at exactly R): {base:.1f} req/s = {base / rate:.3f} R, "
                  f"429s: {base_throttled}")
            print(f"hub: {actions} actions in {elapsed:.1f} s, {len(served)} served at {rate_hub:.1f} req/s "
                  f"(busiest 1-s window {busiest_second(served)}, limit {rate:g}); "
                  f"429s: {throttled - throttled_before}; failed: {len(failures)}{' — ' + failures[0] if failures else ''}")
            print(f"token refreshes: {grants.count('refresh_token')} ({actions} actions started on an expired token)")
            return rate_hub / rate
        finally:
            fake.stop()
            await env.shutdown()
            await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="the fake provider's limit R, requests/s")
    parser.add_argument("--headroom", type=float, help="queue rate / R (default: the catalogue's, 0.95)")
    args = parser.parse_args()
    ratio = asyncio.run(main(args.actions, args.rate, args.headroom))
    print(f"ratio={ratio:.3f}")
