"""``/v1/orgs/{id}``: the caller's own org and its settings (CRM callback and its signing secret, feature flags)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import AnyHttpUrl, BaseModel

from activities.opportunities import crm_signing_secret
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep
from hub.problems import Problem
from hub.store.orgs import Org, record_audit

router = APIRouter(prefix="/v1/orgs", tags=["orgs"])


class OrgPublic(BaseModel):
    """An org as the API shows it."""

    id: str
    name: str
    crm_callback_url: str | None
    flags: dict[str, bool]
    created_at: datetime


class OrgUpdate(BaseModel):
    """Fields an admin may change; absent fields stay as they are."""

    name: str | None = None
    crm_callback_url: AnyHttpUrl | None = None
    flags: dict[str, bool] | None = None


async def _own_org(session: SessionDep, org_id: str, caller_org: str) -> Org:
    org = await session.get(Org, org_id) if org_id == caller_org else None
    if org is None:
        raise Problem(404, f"org {org_id!r} not found")
    return org


@router.get("/{org_id}")
async def get_org(org_id: str, session: SessionDep, key: ReaderKey) -> OrgPublic:
    """The caller's org; any other org is 404."""
    return OrgPublic.model_validate(await _own_org(session, org_id, key.org_id), from_attributes=True)


@router.patch("/{org_id}")
async def update_org(org_id: str, body: OrgUpdate, session: SessionDep, key: AdminKey) -> OrgPublic:
    """Change the org's name, CRM callback URL or feature flags (admin)."""
    org = await _own_org(session, org_id, key.org_id)
    changes = body.model_dump(exclude_unset=True, mode="json")
    if "flags" in changes:
        changes["flags"] = {**org.flags, **changes["flags"]}
    for field, value in changes.items():
        setattr(org, field, value)
    await record_audit(session, org.id, key.key_id, "org.updated", f"org/{org.id}", changes)
    return OrgPublic.model_validate(org, from_attributes=True)


@router.post("/{org_id}/crm-signing-secret")
async def rotate_crm_secret(org_id: str, hub: HubDep, session: SessionDep, key: AdminKey) -> dict:
    """Create a new secret for signing CRM callbacks and show it once (the old one stops signing)."""
    org = await _own_org(session, org_id, key.org_id)
    secret = await crm_signing_secret(hub, org.id, rotate=True)
    await record_audit(session, org.id, key.key_id, "org.crm_signing_secret_rotated", f"org/{org.id}", {})
    return {"secret": secret, "header": "FulQrun-Signature"}
