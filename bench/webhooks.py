"""Benchmark: signed Stripe webhooks accepted per second at 32 connections, against a bare FastAPI endpoint.

Starts two servers, one uvicorn process each, on loopback ports: the hub's API (``fulqrun-hub api`` on
a fresh SQLite data dir, relay off — acceptance alone is measured: verify the Stripe signature over the
raw bytes, commit the inbox row, answer) and a bare FastAPI app whose one endpoint reads the body and
answers JSON. The same asyncio load generator (32 keep-alive connections, each request a fresh
``invoice.paid`` event with its own id and a valid ``Stripe-Signature``) runs against each for the same
time. Both figures come from the same run, so the ratio is what counts on a noisy machine.

    .venv/bin/python bench/webhooks.py [--seconds 10] [--connections 32]

Prints accepted/s, p50 and p99 for each, then the last line ``ratio=<x>``: hub accepted/s / bare req/s
(target ≥ 0.5, with the hub's p99 ≤ 25 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from fastapi import FastAPI, Request  # noqa: E402

from connectors.signing import sign_stripe  # noqa: E402
from hub.auth import ensure_org  # noqa: E402
from hub.store import Database  # noqa: E402
from hub.store.connections import Connection, secret_owner  # noqa: E402
from hub.store.secrets import put_secret  # noqa: E402
from hub.vault import Vault, new_key_line, parse_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_secret"
FIXTURE = ROOT / ".." / "shared" / "data" / "webhooks" / "stripe" / "invoice.paid.json"


def bare_app() -> FastAPI:
    """The baseline: a FastAPI endpoint that reads the body and answers JSON, nothing else."""
    app = FastAPI()

    @app.post("/bare")
    async def bare(request: Request) -> dict:
        await request.body()
        return {"accepted": 1, "duplicates": 0}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def event_template() -> tuple[bytes, bytes]:
    """The invoice.paid payload split around its event id."""
    path = Path(os.environ.get("HUB_SHARED_DATA", ROOT / ".." / "shared" / "data")) / "webhooks/stripe/invoice.paid.json"
    doc = json.loads(path.read_bytes() if path.exists() else FIXTURE.read_bytes())
    doc["id"] = "\x00"
    head, tail = json.dumps(doc).encode().split(b"\\u0000")
    return head, tail


async def load(port: int, path: str, seconds: float, connections: int, warmup: float, tag: str) -> dict:
    """Drive ``connections`` keep-alive clients for ``warmup + seconds``; count and time the measured part."""
    head, tail = event_template()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    counter = 0

    async def client(n: int) -> None:
        nonlocal counter
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            counter += 1
            body = head + f"evt_{tag}_{n}_{counter}".encode() + tail
            sig = sign_stripe(body, SECRET, int(time.time()))
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Stripe-Signature: {sig}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            t0 = time.perf_counter()
            writer.write(request)
            header = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            elapsed = time.perf_counter() - t0
            if now >= measure_from:
                latencies.append(elapsed)
                status = int(header[9:12])
                statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(connections)))
    latencies.sort()
    ok = statuses.get(200, 0)
    return {
        "rps": ok / seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
        "statuses": statuses,
    }


async def prepare(data_dir: Path, vault_keys: str) -> str:
    """Schema, org and a Stripe connection with its webhook secret; returns the connection id."""
    db = Database(f"sqlite+aiosqlite:///{data_dir / 'hub.db'}")
    await db.migrate()
    vault = Vault(parse_keys(vault_keys))
    async with db.session() as session:
        await ensure_org(session, "bench")
        conn = Connection(org_id="bench", provider="stripe", name="bench", auth_mode="api_key", config={},
                          status="active")
        session.add(conn)
        await session.flush()
        await put_secret(session, vault, "bench", secret_owner(conn.id), "webhook_secrets", SECRET)
        con_id = conn.id
    await db.dispose()
    return con_id


def spawn(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        data_dir = Path(tmp)
        vault_keys = new_key_line("b1")
        con = await prepare(data_dir, vault_keys)
        env = {
            **os.environ, "HUB_DATA_DIR": str(data_dir), "HUB_VAULT_KEYS": vault_keys, "HUB_WEBHOOK_RELAY": "false",
            "HUB_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        bare_port, hub_port = free_port(), free_port()
        exe = str(Path(sys.executable).parent / "fulqrun-hub")
        procs = [
            spawn([sys.executable, "-m", "uvicorn", "bench.webhooks:bare_app", "--factory", "--port", str(bare_port),
                   "--log-level", "warning", "--no-access-log"], env),
            spawn([exe, "api", "--port", str(hub_port)], env),
        ]
        try:
            await asyncio.gather(wait_port(bare_port), wait_port(hub_port))
            bare = await load(bare_port, "/bare", args.seconds, args.connections, args.warmup, "bare")
            hub = await load(hub_port, f"/webhooks/stripe/{con}", args.seconds, args.connections, args.warmup, "hub")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        db = Database(f"sqlite+aiosqlite:///{data_dir / 'hub.db'}")
        async with db.engine.connect() as conn:
            from sqlalchemy import text

            stored = (await conn.execute(text("SELECT count(*) FROM webhook_events"))).scalar()
        await db.dispose()
    print(f"connections={args.connections} seconds={args.seconds}")
    print(f"bare FastAPI endpoint: {bare['rps']:.0f} req/s  p50={bare['p50_ms']:.1f} ms  p99={bare['p99_ms']:.1f} ms  "
          f"statuses={bare['statuses']}")
    print(f"hub signed Stripe webhooks: {hub['rps']:.0f} accepted/s  p50={hub['p50_ms']:.1f} ms  "
          f"p99={hub['p99_ms']:.1f} ms  statuses={hub['statuses']}  inbox rows={stored}")
    print(f"ratio={hub['rps'] / bare['rps']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
