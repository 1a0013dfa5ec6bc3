"""Finding 9 and issue 18: API keys listed and revoked (admin API and CLI) with their last use; a
revoked key gets 401 at once in the revoking process, and within the key cache's TTL in any other."""

from __future__ import annotations

from pathlib import Path

import httpx
from typer.testing import CliRunner

from app.cli import app as cli
from hub.auth import KeyCache, create_key
from hub.runtime import Hub
from hub.store.orgs import ApiKey
from tests.conftest import bearer
from tests.hub.test_cli import cli_env  # noqa: F401 - the CLI's environment fixture


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _id(key: str) -> str:
    return key.split("_", 2)[1]


async def test_admin_lists_creates_and_revokes_keys_and_a_revoked_key_is_refused_at_once(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    async with hub.db.session() as s:
        other_org = await create_key(s, "globex", "admin")
    made = await api.post("/v1/api-keys", json={"role": "crm", "name": "crm-sync"}, headers=bearer(admin_key))
    assert made.status_code == 201 and made.json()["key"].startswith("fqh_")
    crm = made.json()["key"]
    assert (await api.get("/v1/pipelines", headers=bearer(crm))).status_code == 200  # used: now cached
    listed = (await api.get("/v1/api-keys", headers=bearer(admin_key))).json()["items"]
    assert {k["id"] for k in listed} == {_id(admin_key), _id(crm)}  # never another org's keys
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    used = next(k for k in listed if k["id"] == _id(crm))
    assert used["role"] == "crm" and used["name"] == "crm-sync" and used["last_used_at"] and not used["revoked_at"]
    assert used["created_at"].endswith(("+00:00", "Z")) and used["last_used_at"].endswith(("+00:00", "Z"))

    assert (await api.post("/v1/api-keys", json={"role": "crm"}, headers=bearer(crm))).status_code == 403
    assert (await api.delete(f"/v1/api-keys/{_id(other_org)}", headers=bearer(admin_key))).status_code == 404
    assert (await api.delete(f"/v1/api-keys/{_id(crm)}", headers=bearer(admin_key))).status_code == 204
    refused = await api.get("/v1/pipelines", headers=bearer(crm))
    assert refused.status_code == 401  # at once, although the key was cached a moment ago
    after = (await api.get("/v1/api-keys", headers=bearer(admin_key))).json()["items"]
    assert next(k for k in after if k["id"] == _id(crm))["revoked_at"]
    assert (await api.get("/v1/pipelines", headers=bearer(other_org))).status_code == 200


async def test_the_key_cache_skips_the_database_and_revocation_reaches_another_process_within_its_ttl(
    hub: Hub, admin_key: str
) -> None:
    clock = Clock()
    here, there = KeyCache(ttl=5, clock=clock), KeyCache(ttl=5, clock=clock)  # two API processes
    assert (await here.resolve(hub.db, admin_key)).role == "admin"
    assert (await there.resolve(hub.db, admin_key)).org_id == "acme"

    real_db = hub.db

    class NoDatabase:
        def session(self) -> None:
            raise AssertionError("a cached key must not open a database session")

    assert (await here.resolve(NoDatabase(), admin_key)).key_id == _id(admin_key)  # type: ignore[arg-type]
    assert await here.resolve(real_db, admin_key[:-1] + "x") is None  # a wrong secret never hits the cache

    from hub.auth import revoke_key

    async with real_db.session() as s:
        await revoke_key(s, "acme", _id(admin_key), actor="test")
    here.forget(_id(admin_key))  # the revoking process
    assert await here.resolve(real_db, admin_key) is None
    clock.now += 4.9
    assert await there.resolve(real_db, admin_key) is not None  # the other process: still within its TTL
    clock.now += 0.2
    assert await there.resolve(real_db, admin_key) is None  # ... and refused once it is past


async def test_last_use_is_recorded_to_the_minute_not_per_request(hub: Hub, admin_key: str) -> None:
    cache = KeyCache(ttl=0)
    await cache.resolve(hub.db, admin_key)
    async with hub.db.sessions() as s:
        first = (await s.get(ApiKey, _id(admin_key))).last_used_at
    await cache.resolve(hub.db, admin_key)
    async with hub.db.sessions() as s:
        assert first is not None and (await s.get(ApiKey, _id(admin_key))).last_used_at == first


def test_keys_list_and_revoke_from_the_cli(cli_env: Path) -> None:  # noqa: F811 - the imported fixture
    runner = CliRunner()
    key = runner.invoke(cli, ["keys", "create", "--org", "acme", "--role", "viewer", "--name", "board"]).stdout.strip()
    listed = runner.invoke(cli, ["keys", "list", "--org", "acme"])
    assert listed.exit_code == 0 and f"{_id(key)}\tviewer\tboard\t" in listed.stdout
    assert listed.stdout.splitlines()[1].endswith("\t-")  # not revoked
    revoked = runner.invoke(cli, ["keys", "revoke", _id(key)])
    assert revoked.exit_code == 0 and f"revoked {_id(key)}" in revoked.stdout
    assert not runner.invoke(cli, ["keys", "list", "--org", "acme"]).stdout.splitlines()[1].endswith("\t-")
    missing = runner.invoke(cli, ["keys", "revoke", "nope"])
    assert missing.exit_code == 1 and "no API key 'nope'" in missing.stderr
