"""Schemathesis over the hub's OpenAPI with every role's key: no server error, no response that breaks the schema.

The hub (API and worker) runs in its own process (on the session's Temporal dev server and a
SQLite database holding the demo pipeline, a rule and a connection), so schemathesis's blocking
client never waits on the event loop serving it. Bounded: ``EXAMPLES`` generated cases per
operation and role, derandomized (the same cases every run), no example database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from temporalio.testing import WorkflowEnvironment

from hub.auth import create_key
from hub.runtime import Hub
from hub.settings import Settings
from hub.store.resources import apply_resource
from rules.defaults import PEAK_PIPELINE
from rules.loader import load_path, load_text
from tests.routes.test_resources import RULE_YAML

EXAMPLES = 12  # valid and invalid cases mixed
ROLES = ("admin", "crm", "viewer")
SKIP = {
    ("POST", "/v1/ai/models"),  # multipart uploads that start training jobs: tests/security/test_model_upload.py
    ("GET", "/readyz"),  # 503 is its answer to a slow Temporal (a loaded machine); see tests/hub/test_api_auth.py
}


async def _prepare(settings: Settings) -> dict[str, str]:
    hub = Hub.from_settings(settings)
    await hub.db.migrate()
    async with hub.db.session() as session:
        keys = {role: await create_key(session, "acme", role) for role in ROLES}
        await apply_resource(session, "acme", load_path(PEAK_PIPELINE).documents[0].data, actor="test")
        await apply_resource(session, "acme", load_text(RULE_YAML).documents[0].data, actor="test")
    await hub.close()
    return keys


def _fuzz_one(operation: schemathesis.APIOperation, base_url: str, headers: dict[str, str]) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
    )  # fmt: skip
    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in schemathesis.GenerationMode)))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    run()


def _fuzz(base_url: str, keys: dict[str, str]) -> tuple[int, list[str]]:
    """Every operation × role; returns how many operations ran and the failures (operation, role, check)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        operations += 1
        for role in ROLES:
            try:
                _fuzz_one(operation, base_url, {"Authorization": f"Bearer {keys[role]}"})
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every failure, then report all
                failures.append(f"{operation.method.upper()} {operation.path} as {role}: {str(exc)[:600]}")
    return operations, failures


async def test_openapi_fuzzing_finds_no_server_error(
    temporal_env: WorkflowEnvironment, vault_keys: str, tmp_path: Path, unused_tcp_port: int
) -> None:
    settings_ = Settings(data_dir=tmp_path / "data", vault_keys=vault_keys)
    keys = await _prepare(settings_)
    env = {
        **os.environ,
        "HUB_DATA_DIR": str(settings_.data_dir),
        "HUB_VAULT_KEYS": vault_keys,
        "HUB_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "HUB_TASK_QUEUE": f"schemathesis-{unused_tcp_port}",
        "HUB_WEBHOOK_RELAY": "false",
        "HUB_LOG_LEVEL": "ERROR",
    }
    serve = f"from app.cli import _serve_part; _serve_part(api=True, worker=True, host='127.0.0.1', port={unused_tcp_port})"
    cmd = [sys.executable, "-c", serve]
    server = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[2])
    base_url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert server.poll() is None, "the API process exited"
                try:
                    if (await http.get(f"{base_url}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API did not start"
                await asyncio.sleep(0.2)
        operations, failures = await asyncio.to_thread(_fuzz, base_url, keys)
    finally:
        server.terminate()
        server.wait(10)
    assert operations >= 45  # the whole API was read from /openapi.json
    if failures:
        pytest.fail(f"{len(failures)} operation/role pairs failed:\n\n" + "\n\n".join(failures), pytrace=False)


pytestmark = pytest.mark.timeout(600)
