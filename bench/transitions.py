"""Benchmark: stage transitions through the HTTP API against raw Temporal Updates, same dev server.

N opportunities are registered (``PUT /v1/opportunities/{id}``), then each makes M transitions
(``POST …/transitions``): the 1st all at once as a warm-up; the 2nd one opportunity at a time, each
``--settle`` seconds after the one before so that its effects are done (the Update round trip, DESIGN §8
target p50 <= 50 ms); the 3rd one at a time back to back (each while the effects of the one before still
run in the same process); the other M-3 for all opportunities at once (the throughput figure; one after
the other per opportunity). All go through a hub process (API + worker as ``fulqrun-hub run`` builds
them) on a Temporal dev server started here (file-backed like ``make run``; ``--in-memory`` for the
in-memory store). Each transition is the full path: HTTP, API key, Temporal Update with the pipeline
check in its validator, and then the transition's effects in the workflow (rules plan, AI insight,
projection, CRM event).

The baseline, measured in the same run on the same server: N trivial workflows × M Updates (a
counter, with a validator), sent the same way straight with the Temporal client, its worker in its own
process.

    .venv/bin/python bench/transitions.py [--opps 20] [--transitions 6] [--settle 0.5] [--in-memory]

Prints p50/p99 of each phase and transitions/s of the last, the hub's peak RSS, the settled and
back-to-back p50 against the raw Update p50 of the same phase (targets: ≤ 1.5× raw and ≤ 50 ms), and
finally ``ratio=<x>`` = hub transitions/s ÷ raw Updates/s in the all-at-once phase (target ≥ 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from temporalio import workflow

if not __package__ and not workflow.unsafe.in_sandbox():  # a script: the repository root comes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

with workflow.unsafe.imports_passed_through():  # the baseline workflow lives in this file
    import httpx
    from temporalio.client import Client
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

ORG = "bench"


def pipeline(stages: int) -> dict:
    """A linear pipeline s0 → s1 → … with a CEL entry criterion and a role check on every move."""
    return {
        "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "bench"},
        "spec": {
            "stages": [{"key": f"s{i}", "name": f"Stage {i}", "color": "#2563EB", "probability": i / stages,
                        "checklist": []} for i in range(stages)],
            "transitions": [{"from": f"s{i}", "to": f"s{i + 1}", "when": "opp.amount > 0.0 && actor.role != ''",
                             "roles": ["ae", "manager"]} for i in range(stages - 1)],
        },
    }  # fmt: skip


@workflow.defn
class Trivial:
    """The baseline: a counter moved by an Update with a validator."""

    def __init__(self) -> None:
        self.n = 0
        self.done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return self.n

    @workflow.update
    async def bump(self, to: int) -> int:
        self.n = to
        return self.n

    @bump.validator
    def _check(self, to: int) -> None:
        if to != self.n + 1:
            raise ValueError(f"expected {self.n + 1}")

    @workflow.signal
    def stop(self) -> None:
        self.done = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------ child processes


async def serve_hub() -> None:
    """Child: the API and the worker in one process, configured by HUB_* variables (as ``fulqrun-hub run``)."""
    import uvicorn

    from api import create_app
    from hub.runtime import Hub
    from hub.settings import Settings
    from worker import build_workers

    hub = Hub.from_settings(Settings())
    workers = build_workers(hub, await hub.temporal())
    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=hub.settings.api_port,
                                           log_level="warning", lifespan="on"))  # fmt: skip
    await asyncio.gather(server.serve(), *(w.run() for w in workers))


async def serve_trivial(address: str, queue: str) -> None:
    """Child: the baseline worker."""
    client = await Client.connect(address)
    await Worker(client, task_queue=queue, workflows=[Trivial]).run()


# ------------------------------------------------------------------ driver


async def prepare(data_dir: Path, env: dict[str, str], pipeline_doc: dict) -> str:
    """Schema, org, API key and the bench pipeline, written before the hub process starts."""
    from hub.auth import create_key
    from hub.runtime import Hub
    from hub.settings import Settings
    from hub.store.resources import apply_resource

    settings = Settings(data_dir=data_dir, vault_keys=env["HUB_VAULT_KEYS"])
    hub = Hub.from_settings(settings)
    await hub.db.migrate()
    async with hub.db.session() as session:
        key = await create_key(session, ORG, "crm", name="bench")
        await apply_resource(session, ORG, pipeline_doc, actor="bench")
    await hub.close()
    return key


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"hub process exited with {proc.returncode}")
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("hub did not become ready")
            await asyncio.sleep(0.2)


@dataclass
class Phases:
    """Latencies (seconds) of the settled and back-to-back one-at-a-time phases, and the all-at-once phase."""

    settled: list[float] = field(default_factory=list)
    back_to_back: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: int = 0


async def phases(ids: list, move: Callable[[object, int, list[float]], Awaitable[None]]) -> Phases:
    """The benchmark's pattern over ``ids``: warm-up, settled, back to back, then all at once."""
    out = Phases()

    async def journey(item: object) -> None:
        for step in range(4, ARGS.transitions + 1):
            await move(item, step, out.concurrent)

    await asyncio.gather(*(move(i, 1, []) for i in ids))
    await asyncio.sleep(2)  # let the warm-up transitions' effects finish
    for i in ids:
        await move(i, 2, out.settled)
        await asyncio.sleep(ARGS.settle)
    for i in ids:
        await move(i, 3, out.back_to_back)
    began = time.perf_counter()
    await asyncio.gather(*(journey(i) for i in ids))
    out.seconds = time.perf_counter() - began
    return out


async def run_hub(url: str, key: str) -> Phases:
    """Register N opportunities, then move them through the phases over the HTTP API."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"name": "Bench deal", "branch": "emea", "owner_role": "ae", "amount": 50000.0, "currency": "EUR"}
    failures = 0
    limits = httpx.Limits(max_connections=ARGS.opps + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:

        async def move(opp: str, step: int, into: list[float]) -> None:
            nonlocal failures
            began = time.perf_counter()
            r = await http.post(f"/v1/opportunities/{opp}/transitions",
                                json={"to": f"s{step}", "actor": {"id": "u1", "role": "ae"}})
            into.append(time.perf_counter() - began)
            if r.status_code != 200:
                failures += 1
                print(f"  {opp} -> s{step}: {r.status_code} {r.text[:200]}", file=sys.stderr)

        run = uuid.uuid4().hex[:6]
        ids = [f"b{run}-{i}" for i in range(ARGS.opps)]
        for r in await asyncio.gather(*(http.put(f"/v1/opportunities/{i}", json=body) for i in ids)):
            r.raise_for_status()
        out = await phases(ids, move)
        out.failures = failures
        return out


async def run_baseline(client: Client, queue: str) -> Phases:
    """The same pattern on N trivial workflows with raw Updates."""
    run = uuid.uuid4().hex[:6]
    handles = await asyncio.gather(*(
        client.start_workflow(Trivial.run, id=f"trivial-{run}-{i}", task_queue=queue) for i in range(ARGS.opps)))

    async def bump(handle, step: int, into: list[float]) -> None:
        began = time.perf_counter()
        await handle.execute_update(Trivial.bump, step)
        into.append(time.perf_counter() - began)

    out = await phases(handles, bump)
    for h in handles:
        await h.signal(Trivial.stop)
    return out


def report(name: str, p: Phases) -> float:
    rate = len(p.concurrent) / p.seconds

    def figures(latencies: list[float]) -> str:
        return f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * percentile(latencies, 0.99):.1f} ms"

    print(f"{name}: one at a time, settled {figures(p.settled)}; back to back {figures(p.back_to_back)}; "
          f"all at once {len(p.concurrent)} in {p.seconds:.2f}s = {rate:.1f}/s, {figures(p.concurrent)}")
    return rate


@dataclass
class Stack:
    """What ``stack`` started: the dev server's client, the hub's URL, key, pid and database, the baseline's
    task queue."""

    client: Client
    url: str
    key: str
    hub_pid: int
    database_url: str
    queue: str
    store: str


@asynccontextmanager
async def stack(pipeline_doc: dict, in_memory: bool) -> AsyncIterator[Stack]:
    """A Temporal dev server (file-backed unless ``in_memory``), a hub process (API + worker) whose org has a
    ``crm`` key and ``pipeline_doc``, and the baseline's worker in a process of its own."""
    from app.runner import temporal_cli
    from hub.settings import Settings
    from hub.temporal import dev_server_file_args
    from hub.vault import new_key_line

    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        data_dir = Path(tmp)
        extra = ["--log-level", "error", *([] if in_memory else dev_server_file_args(str(data_dir / "temporal.db")))]
        temporal = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(),
                                                         dev_server_extra_args=extra)  # as `make run` starts it
        address = temporal.client.service_client.config.target_host
        port = free_port()
        env = {**os.environ, "HUB_DATA_DIR": str(data_dir), "HUB_VAULT_KEYS": new_key_line("bench"),
               "HUB_TEMPORAL_ADDRESS": address, "HUB_API_PORT": str(port), "HUB_TASK_QUEUE": "bench",
               "HUB_LOG_LEVEL": "WARNING"}  # fmt: skip
        procs: list[subprocess.Popen] = []
        try:
            key = await prepare(data_dir, env, pipeline_doc)
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-hub"], env=env))
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, procs[-1])
            queue = f"trivial-{uuid.uuid4().hex[:6]}"
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-trivial", address, queue]))
            database_url = Settings(data_dir=data_dir, vault_keys=env["HUB_VAULT_KEYS"]).resolved_database_url
            yield Stack(temporal.client, url, key, procs[0].pid, database_url, queue,
                        "in-memory" if in_memory else "file-backed")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await temporal.shutdown()


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set size (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive() -> None:
    async with stack(pipeline(ARGS.transitions + 1), ARGS.in_memory) as s:
        print(f"Temporal dev server ({s.store}); {ARGS.opps} opportunities x {ARGS.transitions} "
              f"transitions: warm-up, one at a time settled ({ARGS.settle} s apart), one at a time back to "
              f"back, the rest all at once")  # fmt: skip
        hub = await run_hub(s.url, s.key)
        hub_rate = report("hub transitions (HTTP API -> Update)", hub)
        raw = await run_baseline(s.client, s.queue)
        base_rate = report("raw Temporal Updates (trivial workflow)", raw)
        print(f"hub peak RSS {peak_rss_mb(s.hub_pid):.0f} MiB")
        print(f"failures={hub.failures}")
        for phase in ("settled", "back_to_back"):
            hub_p50, raw_p50 = statistics.median(getattr(hub, phase)), statistics.median(getattr(raw, phase))
            verdict = "met" if hub_p50 <= min(1.5 * raw_p50, 0.050) else "NOT met"
            print(f"{phase.replace('_', ' ')} p50 {1000 * hub_p50:.1f} ms = {hub_p50 / raw_p50:.2f}x raw "
                  f"{1000 * raw_p50:.1f} ms (target <= 1.5x, and <= 50 ms): {verdict}")  # fmt: skip
        print(f"ratio={hub_rate / base_rate:.2f}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opps", type=int, default=20, help="opportunities (N)")
    parser.add_argument("--transitions", type=int, default=6, help="transitions per opportunity (M >= 4)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds between the settled transitions")
    parser.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of file-backed")
    parser.add_argument("--serve-hub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-trivial", nargs=2, metavar=("ADDRESS", "QUEUE"), help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = parse() if __name__ == "__main__" and not workflow.unsafe.in_sandbox() else None

if ARGS is not None:
    if ARGS.serve_hub:
        asyncio.run(serve_hub())
    elif ARGS.serve_trivial:
        asyncio.run(serve_trivial(*ARGS.serve_trivial))
    else:
        asyncio.run(drive())
