"""Pipelines and rules as immutable, versioned resources.

Every apply that changes a resource's content adds a version (content-addressed by a SHA-256 of
its canonical JSON); applying unchanged content is a no-op; delete adds a tombstone version.
Every change is written to the audit log with who did it and a field-by-field diff.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow
from hub.store.orgs import record_audit
from rules import scoping
from rules.model import Pipeline, Rule, content_hash, dump
from rules.validate import Issue, ResourceInvalid, parse_resource

Outcome = Literal["created", "changed", "unchanged", "deleted"]
TOMBSTONE_HASH = "deleted"
MAX_DIFF_ENTRIES = 200


class ScopeTie(ResourceInvalid):
    """A pipeline whose scope is exactly as specific as another's for some branch and role."""


class ResourceVersion(Base):
    """One immutable version of a Pipeline or Rule of one org; ``spec`` is the full document."""

    __tablename__ = "resource_versions"
    __table_args__ = (
        UniqueConstraint("org_id", "kind", "name", "version", name="uq_resource_versions_version"),
        Index("ix_resource_versions_lookup", "org_id", "kind", "name"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    branches: Mapped[list] = mapped_column(default=list)
    roles: Mapped[list] = mapped_column(default=list)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


async def _latest(session: AsyncSession, org_id: str, kind: str, name: str) -> ResourceVersion | None:
    return await session.scalar(
        select(ResourceVersion)
        .where(ResourceVersion.org_id == org_id, ResourceVersion.kind == kind, ResourceVersion.name == name)
        .order_by(ResourceVersion.version.desc())
        .limit(1)
    )


def _latest_rows(org_id: str, kind: str):  # noqa: ANN202 - a Select
    newest = (
        select(ResourceVersion.name, func.max(ResourceVersion.version).label("version"))
        .where(ResourceVersion.org_id == org_id, ResourceVersion.kind == kind)
        .group_by(ResourceVersion.name)
        .subquery()
    )
    return (
        select(ResourceVersion)
        .join(newest, (ResourceVersion.name == newest.c.name) & (ResourceVersion.version == newest.c.version))
        .where(
            ResourceVersion.org_id == org_id, ResourceVersion.kind == kind, ResourceVersion.deleted.is_(False)
        )
    )


async def current_versions(session: AsyncSession, org_id: str, kind: str) -> list[ResourceVersion]:
    """The latest version of every resource of a kind that is neither deleted nor disabled, by name."""
    rows = await session.scalars(
        _latest_rows(org_id, kind).where(ResourceVersion.enabled.is_(True)).order_by(ResourceVersion.name)
    )
    return list(rows)


async def list_resources(
    session: AsyncSession, org_id: str, kind: str, limit: int = 50, cursor: str | None = None
) -> tuple[list[ResourceVersion], str | None]:
    """A page of the latest non-deleted versions (disabled included), by name; returns the next cursor."""
    query = _latest_rows(org_id, kind).order_by(ResourceVersion.name).limit(limit + 1)
    if cursor:
        query = query.where(ResourceVersion.name > cursor)
    rows = list(await session.scalars(query))
    return rows[:limit], (rows[limit - 1].name if len(rows) > limit else None)


async def list_versions(
    session: AsyncSession, org_id: str, kind: str, name: str, limit: int = 50, cursor: int | None = None
) -> tuple[list[ResourceVersion], int | None]:
    """A page of every version of one resource, oldest first; returns the next cursor (a version)."""
    query = (
        select(ResourceVersion)
        .where(ResourceVersion.org_id == org_id, ResourceVersion.kind == kind, ResourceVersion.name == name)
        .order_by(ResourceVersion.version)
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(ResourceVersion.version > cursor)
    rows = list(await session.scalars(query))
    return rows[:limit], (rows[limit - 1].version if len(rows) > limit else None)


async def get_version(
    session: AsyncSession, org_id: str, kind: str, name: str, version: int | None = None
) -> ResourceVersion | None:
    """One version (the latest, possibly a tombstone, when ``version`` is None), or None."""
    if version is None:
        return await _latest(session, org_id, kind, name)
    return await session.scalar(
        select(ResourceVersion).where(
            ResourceVersion.org_id == org_id,
            ResourceVersion.kind == kind,
            ResourceVersion.name == name,
            ResourceVersion.version == version,
        )
    )


async def select_pipeline(
    session: AsyncSession, org_id: str, branch: str | None, role: str | None
) -> ResourceVersion | None:
    """The most specific current pipeline for a branch and role, or None if none applies."""
    pipelines = await current_versions(session, org_id, "Pipeline")
    name = scoping.most_specific([(p.name, p.branches, p.roles) for p in pipelines], branch, role)
    return next((p for p in pipelines if p.name == name), None)


async def apply_resource(
    session: AsyncSession, org_id: str, doc: dict[str, Any], actor: str, dry_run: bool = False
) -> tuple[Outcome, ResourceVersion]:
    """Validate and store a document: ("created" | "changed" | "unchanged", the version now current).

    Raises ``ResourceInvalid`` for an invalid document, a ``metadata.org`` of another org, or a
    pipeline whose scope ties with another pipeline. With ``dry_run`` nothing is written.
    """
    resource = parse_resource(doc)
    if resource.metadata.org not in (None, org_id):
        raise ResourceInvalid(
            [
                Issue(
                    ("metadata", "org"),
                    f"org {resource.metadata.org!r} is not the org being applied to ({org_id!r})",
                )
            ]
        )
    resource.metadata.org = org_id
    document = dump(resource)
    digest = content_hash(document)
    kind, name = resource.kind, resource.metadata.name
    latest = await _latest(session, org_id, kind, name)
    if latest is not None and not latest.deleted and latest.content_hash == digest:
        return "unchanged", latest
    if isinstance(resource, Pipeline):
        await _refuse_ties(session, org_id, resource)
    row = ResourceVersion(
        org_id=org_id,
        kind=kind,
        name=name,
        version=(latest.version + 1) if latest else 1,
        content_hash=digest,
        spec=document,
        enabled=resource.spec.enabled if isinstance(resource, Rule) else True,
        deleted=False,
        branches=list(resource.metadata.branches),
        roles=list(resource.metadata.roles),
        created_by=actor,
        created_at=utcnow(),
    )
    outcome: Outcome = "created" if latest is None or latest.deleted else "changed"
    if dry_run:
        return outcome, row
    session.add(row)
    previous = latest.spec if latest is not None and not latest.deleted else {}
    await record_audit(
        session,
        org_id,
        actor,
        f"{kind.lower()}.{outcome}",
        f"{kind.lower()}/{name}",
        {"version": row.version, "content_hash": digest, "diff": document_diff(previous, document)},
    )
    await session.flush()
    return outcome, row


async def delete_resource(
    session: AsyncSession, org_id: str, kind: str, name: str, actor: str
) -> ResourceVersion | None:
    """Add a tombstone version; None if the resource does not exist or is already deleted."""
    latest = await _latest(session, org_id, kind, name)
    if latest is None or latest.deleted:
        return None
    row = ResourceVersion(
        org_id=org_id,
        kind=kind,
        name=name,
        version=latest.version + 1,
        content_hash=TOMBSTONE_HASH,
        spec={},
        enabled=False,
        deleted=True,
        branches=[],
        roles=[],
        created_by=actor,
        created_at=utcnow(),
    )
    session.add(row)
    await record_audit(
        session,
        org_id,
        actor,
        f"{kind.lower()}.deleted",
        f"{kind.lower()}/{name}",
        {"version": row.version, "diff": document_diff(latest.spec, {})},
    )
    await session.flush()
    return row


async def _refuse_ties(session: AsyncSession, org_id: str, pipeline: Pipeline) -> None:
    scope = (pipeline.metadata.branches, pipeline.metadata.roles)
    for other in await current_versions(session, org_id, "Pipeline"):
        if other.name != pipeline.metadata.name and scoping.ties(scope, (other.branches, other.roles)):
            raise ScopeTie(
                [
                    Issue(
                        ("metadata",),
                        f"scope branches={scope[0]} roles={scope[1]} ties with pipeline {other.name!r} "
                        f"(branches={other.branches} roles={other.roles}): for an opportunity in both scopes neither "
                        "is more specific; narrow or widen one of them",
                    )
                ]
            )


def document_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Field-by-field differences ``[{path, old?, new?}]`` (lists compared by position), capped."""
    out: list[dict[str, Any]] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= MAX_DIFF_ENTRIES or a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                sub = f"{where}.{key}" if where else str(key)
                if key not in a:
                    out.append({"path": sub, "new": b[key]})
                elif key not in b:
                    out.append({"path": sub, "old": a[key]})
                else:
                    walk(a[key], b[key], sub)
            return
        if isinstance(a, list) and isinstance(b, list):
            for i in range(max(len(a), len(b))):
                sub = f"{where}[{i}]"
                if i >= len(a):
                    out.append({"path": sub, "new": b[i]})
                elif i >= len(b):
                    out.append({"path": sub, "old": a[i]})
                else:
                    walk(a[i], b[i], sub)
            return
        out.append({"path": where, "old": a, "new": b})

    walk(old, new, path)
    return out
