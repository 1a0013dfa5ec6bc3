"""``fulqrun-hub run``: the whole hub in one process group, on the embedded defaults."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).with_name("fulqrun-hub")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_DATA_DIR=str(data_dir),
        HUB_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        HUB_TEMPORAL_UI_PORT=str(free_port()),
        HUB_SHARED_DATA=str(data_dir / "no-shared-data"),
    )
    return env


def start(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN), "run", "--port", str(port)], env=env, cwd=data_dir.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 90) -> str:
    """Read the banner and poll /readyz until 200; returns what the process printed so far."""
    deadline = time.monotonic() + timeout
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"hub exited early ({proc.returncode}): {''.join(out)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200 and "try:" in "".join(out):
                return "".join(out)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"not ready within {timeout}s: {''.join(out)}")


def stop(proc: subprocess.Popen, data_dir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"orphaned processes: {leftovers}"


def test_run_starts_everything_prints_a_working_curl_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / ".hub"
    port = free_port()
    env = hub_env(data_dir)
    proc = start(data_dir, port, env)
    banner = wait_ready(proc, port)
    assert f"http://127.0.0.1:{port}/docs" in banner and "Temporal UI" in banner
    urls = re.findall(r"https?://\S+", banner)
    assert urls[0] == f"http://127.0.0.1:{port}/console"  # the console leads
    key_file = data_dir / "admin-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    curl = re.search(r"try:\s+(curl .+)", banner).group(1)
    result = subprocess.run(["bash", "-c", curl + " -s -o /dev/null -w '%{http_code}'"], capture_output=True, text=True)
    assert result.stdout == "200", (curl, result)
    auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    deadline = time.monotonic() + 90
    while True:  # the demo deals are moved through PEAK in the background on first start
        r = httpx.get(f"http://127.0.0.1:{port}/v1/opportunities/demo-stark", headers=auth, timeout=10)
        if r.status_code == 200 and r.json()["stage"] == "keep":
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    stop(proc, data_dir)

    # A second start reuses the data: same key, same schema, the key still works.
    key = key_file.read_text()
    proc = start(data_dir, port, env)
    wait_ready(proc, port)
    assert key_file.read_text() == key
    r = httpx.get(f"http://127.0.0.1:{port}/v1/orgs/demo", headers={"Authorization": f"Bearer {key.strip()}"})
    assert r.status_code == 200
    stop(proc, data_dir)


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data_dir = tmp_path / ".hub"
        proc = subprocess.run(
            [str(BIN), "run", "--port", str(port)], env=hub_env(data_dir), capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: port {port} on 127.0.0.1 (API) is already in use"
