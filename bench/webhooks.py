"""Benchmark: signed Stripe webhooks accepted per second at 32 connections, against a bare FastAPI endpoint.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``). Starts two servers, one uvicorn process
each, on loopback ports: the hub's API (``fulqrun-hub api`` on a fresh SQLite data dir, relay off —
acceptance alone is measured: verify the Stripe signature over the raw bytes, commit the inbox row,
answer) and a bare FastAPI app whose one endpoint reads the body and answers JSON. Both are driven
the same way: wrk with ``bench/webhooks.lua``, 32 keep-alive connections, each request taken from a
pool of pre-signed ``invoice.paid`` deliveries (the real payload, each with its own event id and a
valid ``Stripe-Signature`` made just before the run, well within Stripe's 300 s tolerance). After a
warm-up of each, ``--rounds`` rounds alternate a bare run and a hub run, so both see the same machine;
each hub run's pool is sized from the bare run before it so no event repeats (a run that repeated
one is refused); p50/p99 come from wrk's latency histogram.

    .venv/bin/python bench/webhooks.py [--seconds 10] [--rounds 3] [--connections 32] [--threads 1]

Prints accepted/s, p50, p99 and the server's CPU µs per request of every run, the inbox's row count (a little above the hub's 2xx
count, as requests in flight when a wrk run ends are stored but not counted), the median over the
rounds, then the last line ``ratio=<x>``: the median of the rounds' hub accepted/s ÷ bare req/s
(target ≥ 0.5, with the hub's median p99 ≤ 25 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from fastapi import FastAPI, Request
from sqlalchemy import func, select

from connectors.signing import sign_stripe
from hub.auth import ensure_org
from hub.store import Database
from hub.store.connections import Connection, secret_owner
from hub.store.inbox import WebhookEvent
from hub.store.secrets import put_secret
from hub.vault import Vault, new_key_line, parse_keys

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_suffix(".lua")
SECRET = "whsec_bench_secret"
EVENT_ID = b'"evt_000000000000000000000000"'
BARE_POOL = 20_000  # the bare endpoint does not dedupe: its requests may repeat
POOL_MARGIN = 1.5  # the hub's pool holds 1.5x what the bare endpoint's rate would need
WRK_MISSING = (
    "bench/webhooks.py needs wrk, the HTTP load generator: install it with `apt-get install -y wrk` "
    "(Debian/Ubuntu) or your system's package manager, then run the benchmark again"
)


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


def wait_port(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def invoice_paid() -> bytes:
    """The real Stripe ``invoice.paid`` delivery (HUB_SHARED_DATA, default ../shared/data)."""
    data = Path(os.environ.get("HUB_SHARED_DATA", ROOT / ".." / "shared" / "data"))
    raw = (data / "webhooks" / "stripe" / "invoice.paid.json").read_bytes()
    if EVENT_ID not in raw:
        raise SystemExit(f"the invoice.paid fixture no longer carries the event id {EVENT_ID.decode()}")
    return raw


def write_pool(path: Path, count: int, tag: str) -> None:
    """``count`` deliveries with distinct event ids, each signed now: records ``sig\\tlength\\nbody``.

    The file is on disk when this returns: a hub pool is hundreds of MB (5 KB a delivery), and left to the
    kernel's writeback it was being written out during the hub run that followed, taking disk and CPU from
    the hub's own writes (the bare runs read a pool written once, before the warm-up)."""
    raw, now = invoice_paid(), int(time.time())
    with path.open("wb") as out:
        for i in range(count):
            body = raw.replace(EVENT_ID, f'"evt_{tag}_{i:08d}"'.encode(), 1)
            out.write(f"{sign_stripe(body, SECRET, now)}\t{len(body)}\n".encode() + body)
        out.flush()
        os.fsync(out.fileno())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, pool: Path, seconds: int, args: argparse.Namespace, server: int) -> dict:
    """One wrk run; the figures printed by the Lua script's done(), and the server's CPU µs per answer.

    CPU time per answer barely moves with the machine's other load, where requests per second do.
    """
    cpu = cpu_seconds(server)
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s", "--latency",
           "--timeout", "10s", "-s", str(LUA), url, "--", str(pool), str(args.threads)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = re.search(r"^BENCH (.*)$", run.stdout, re.MULTILINE)
    if run.returncode or line is None:
        raise SystemExit(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    figures = {k: int(v) for k, v in (pair.split("=") for pair in line.group(1).split())}
    ok = figures["requests"] - figures["non2xx"]
    cpu_us = (cpu_seconds(server) - cpu) * 1e6 / max(figures["requests"], 1)
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{server}/status").read_text()).group(1)) / 1024
    return {**figures, "ok": ok, "cpu_us": cpu_us, "rss_mb": rss, "rps": ok / (figures["duration_us"] / 1e6),
            "p50_ms": figures["p50_us"] / 1000, "p99_ms": figures["p99_us"] / 1000}  # fmt: skip


async def prepare(db_url: str, vault_keys: str) -> str:
    """Schema, org and a Stripe connection with its webhook secret; returns the connection id."""
    db = Database(db_url)
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


async def stored_rows(db_url: str) -> int:
    db = Database(db_url)
    async with db.session() as session:
        count = await session.scalar(select(func.count()).select_from(WebhookEvent))
    await db.dispose()
    return count


def spawn(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def report(name: str, unit: str, r: dict) -> str:
    return (f"{name}: {r['rps']:.0f} {unit}  p50={r['p50_ms']:.1f} ms  p99={r['p99_ms']:.1f} ms  "
            f"cpu={r['cpu_us']:.0f} µs/request  rss={r['rss_mb']:.0f} MiB  "
            f"requests={r['requests']} non-2xx={r['non2xx']} socket errors={r['socket_errors']} "
            f"timeouts={r['timeouts']}")  # fmt: skip


def hub_run(url: str, data_dir: Path, tag: str, bare: dict, seconds: int, args: argparse.Namespace,
            server: int) -> dict:  # fmt: skip
    """One hub run over a fresh pool of unique events, sized from the bare run just before it."""
    pool = data_dir / f"hub-{tag}.pool"
    write_pool(pool, math.ceil(bare["rps"] * seconds * POOL_MARGIN) + 1000, tag)
    return wrk(url, pool, seconds, args, server)


def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_MISSING)
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        data_dir = Path(tmp)
        db_url = f"sqlite+aiosqlite:///{data_dir / 'hub.db'}"
        vault_keys = new_key_line("b1")
        con = asyncio.run(prepare(db_url, vault_keys))
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
            wait_port(bare_port)
            wait_port(hub_port)
            bare_url = f"http://127.0.0.1:{bare_port}/bare"
            hub_url = f"http://127.0.0.1:{hub_port}/webhooks/stripe/{con}"
            bare_pool = data_dir / "bare.pool"
            write_pool(bare_pool, BARE_POOL, "bare")
            bare_pid, hub_pid = (proc.pid for proc in procs)
            warm = wrk(bare_url, bare_pool, args.warmup, args, bare_pid)
            rounds = [("warm-up", warm, hub_run(hub_url, data_dir, "warm", warm, args.warmup, args, hub_pid))]
            for n in range(1, args.rounds + 1):
                bare = wrk(bare_url, bare_pool, args.seconds, args, bare_pid)
                hub = hub_run(hub_url, data_dir, f"r{n}", bare, args.seconds, args, hub_pid)
                rounds.append((f"round {n}", bare, hub))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stored = asyncio.run(stored_rows(db_url))
    if any(hub["wraps"] for _, _, hub in rounds):
        raise SystemExit("the hub's pool of events ran out and events were sent twice: the run does not count")
    print(f"connections={args.connections} seconds={args.seconds} rounds={args.rounds} wrk threads={args.threads}")
    measured = rounds[1:]
    for name, bare, hub in measured:
        print(f"{name}: " + report("bare FastAPI endpoint", "req/s", bare))
        print(f"{name}: " + report("hub signed Stripe webhooks", "accepted/s", hub)
              + f"  ratio={hub['rps'] / bare['rps']:.2f}")  # fmt: skip
    ratio = statistics.median(hub["rps"] / bare["rps"] for _, bare, hub in measured)
    p99 = statistics.median(hub["p99_ms"] for _, _, hub in measured)
    p50 = statistics.median(hub["p50_ms"] for _, _, hub in measured)
    accepted = statistics.median(hub["rps"] for _, _, hub in measured)
    cpu_ratio = statistics.median(bare["cpu_us"] / hub["cpu_us"] for _, bare, hub in measured)
    print(f"inbox rows={stored} (2xx answers={sum(hub['ok'] for _, _, hub in rounds)})")
    print(f"median over {len(measured)} rounds: hub {accepted:.0f} accepted/s  p50={p50:.1f} ms  p99={p99:.1f} ms  "
          f"cpu ratio (bare ÷ hub CPU per request, steadier under load)={cpu_ratio:.2f}  ratio={ratio:.2f}")  # fmt: skip
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare and hub runs")
    main(parser.parse_args())
