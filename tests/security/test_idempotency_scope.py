"""Finding 5: a stored idempotent answer belongs to the API key that made it.

The attack: an admin rotates the CRM signing secret with ``Idempotency-Key: K``; a viewer of the same
org sends the same request with the same K and used to get the admin's shown-once secret replayed.
"""

from __future__ import annotations

import httpx

from hub.auth import create_key
from hub.runtime import Hub
from tests.conftest import bearer


async def test_a_viewer_reusing_an_admins_idempotency_key_is_refused_not_replayed(
    api: httpx.AsyncClient, hub: Hub, admin_key: str
) -> None:
    async with hub.db.session() as s:
        viewer = await create_key(s, "acme", "viewer")
        other_admin = await create_key(s, "acme", "admin")
    url = "/v1/orgs/acme/crm-signing-secret"
    first = await api.post(url, headers={**bearer(admin_key), "Idempotency-Key": "K"})
    assert first.status_code == 200 and first.json()["secret"].startswith("whsec_")

    stolen = await api.post(url, headers={**bearer(viewer), "Idempotency-Key": "K"})
    assert stolen.status_code == 403, stolen.text  # authorised like any request: the viewer may not
    assert "idempotent-replayed" not in stolen.headers and first.json()["secret"] not in stolen.text

    # another admin's key with the same K runs its own request (a new secret), never the first answer
    own = await api.post(url, headers={**bearer(other_admin), "Idempotency-Key": "K"})
    assert own.status_code == 200 and "idempotent-replayed" not in own.headers
    assert own.json()["secret"] != first.json()["secret"]

    # the key that made the answer still gets it replayed
    again = await api.post(url, headers={**bearer(admin_key), "Idempotency-Key": "K"})
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()


async def test_a_revoked_key_gets_no_replay_of_its_own_answer(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    async with hub.db.session() as s:
        crm = await create_key(s, "acme", "crm")
    headers = {**bearer(crm), "Idempotency-Key": "K2"}
    first = await api.patch("/v1/orgs/acme", json={"name": "x"}, headers=headers)
    assert first.status_code == 403  # a refusal is kept for that key ...
    assert (await api.delete(f"/v1/api-keys/{crm.split('_')[1]}", headers=bearer(admin_key))).status_code == 204
    replay = await api.patch("/v1/orgs/acme", json={"name": "x"}, headers=headers)
    assert replay.status_code == 401 and "idempotent-replayed" not in replay.headers  # ... but not past revoking
