"""API keys: 401 without a valid key, 403 for the wrong role, 404 for another org's object."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from activities.opportunities import crm_signing_secret
from hub.auth import create_key
from hub.runtime import Hub
from hub.store.orgs import AuditEntry
from tests.conftest import bearer


async def test_missing_and_invalid_key_are_401_problem_json(api: httpx.AsyncClient, admin_key: str) -> None:
    r = await api.get("/v1/orgs/acme")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 401 and "missing API key" in r.json()["detail"]
    forged = admin_key[:-4] + "AAAA"
    r = await api.get("/v1/orgs/acme", headers=bearer(forged))
    assert r.status_code == 401 and "invalid" in r.json()["detail"]


async def test_wrong_role_is_403(api: httpx.AsyncClient, hub: Hub) -> None:
    async with hub.db.session() as s:
        viewer = await create_key(s, "acme", "viewer")
    assert (await api.get("/v1/orgs/acme", headers=bearer(viewer))).status_code == 200
    r = await api.patch("/v1/orgs/acme", json={"name": "x"}, headers=bearer(viewer))
    assert r.status_code == 403
    assert "viewer" in r.json()["detail"]


async def test_other_orgs_object_is_404_never_the_object(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    async with hub.db.session() as s:
        await create_key(s, "globex", "admin")
    r = await api.get("/v1/orgs/globex", headers=bearer(admin_key))
    assert r.status_code == 404
    assert "globex" not in r.text.replace("'globex'", "")  # only named in the message, no object fields
    r = await api.patch("/v1/orgs/globex", json={"name": "pwned"}, headers=bearer(admin_key))
    assert r.status_code == 404


async def test_admin_updates_org_and_it_is_audited(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    r = await api.patch(
        "/v1/orgs/acme",
        json={"crm_callback_url": "https://crm.example.com/hook", "flags": {"openai": True}},
        headers=bearer(admin_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["flags"] == {"openai": True}
    from sqlalchemy import select

    from hub.store.orgs import AuditEntry

    async with hub.db.session() as s:
        actions = (await s.scalars(select(AuditEntry.action).where(AuditEntry.org_id == "acme"))).all()
    assert actions == ["api_key.created", "org.updated"]


async def test_validation_errors_are_problem_json_naming_the_field(api: httpx.AsyncClient, admin_key: str) -> None:
    r = await api.patch("/v1/orgs/acme", json={"crm_callback_url": "not a url"}, headers=bearer(admin_key))
    assert r.status_code == 422
    assert "crm_callback_url" in r.json()["detail"]


async def test_body_over_limit_is_413(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    big = "x" * (hub.settings.max_body_bytes + 1)
    r = await api.patch("/v1/orgs/acme", content=big, headers=bearer(admin_key) | {"content-type": "application/json"})
    assert r.status_code == 413


async def test_health_and_readiness_need_no_key(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    r = await api.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "temporal": "ok"}


async def test_crm_signing_secret_rotates_for_admins_of_the_org_only_and_is_audited(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    first = (await api.post("/v1/orgs/acme/crm-signing-secret", headers=bearer(admin_key))).json()
    second = (await api.post("/v1/orgs/acme/crm-signing-secret", headers=bearer(admin_key))).json()
    assert first["header"] == "FulQrun-Signature" and first["secret"] != second["secret"]
    assert await crm_signing_secret(hub, "acme") == second["secret"]  # the newest one signs
    async with hub.db.session() as s:
        viewer = await create_key(s, "acme", "viewer")
        actions = (await s.scalars(select(AuditEntry.action).where(AuditEntry.org_id == "acme"))).all()
    assert actions.count("org.crm_signing_secret_rotated") == 2
    assert (await api.post("/v1/orgs/acme/crm-signing-secret", headers=bearer(viewer))).status_code == 403
    assert (await api.post("/v1/orgs/globex/crm-signing-secret", headers=bearer(admin_key))).status_code == 404


async def test_a_key_under_another_scheme_or_empty_is_missing(api: httpx.AsyncClient, admin_key: str) -> None:
    for header in (f"Basic {admin_key}", "Bearer ", "Bearer", admin_key):
        r = await api.get("/v1/orgs/acme", headers={"authorization": header})
        assert r.status_code == 401 and "missing API key" in r.json()["detail"], header
    assert (await api.get("/v1/orgs/acme", headers={"authorization": f"bearer {admin_key}"})).status_code == 200
