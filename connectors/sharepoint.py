"""SharePoint (Microsoft Graph drive API) actions over httpx; tokens come from the connection (msal).

Both actions are idempotent, so a retried or re-run activity never creates anything twice:

* ``sharepoint.ensure_folders`` creates each folder of a tree with ``POST …/children`` and
  ``"@microsoft.graph.conflictBehavior": "fail"``; Graph's 409 ``nameAlreadyExists`` means the folder
  is there (checked to be a folder), which is success. Parents are created before children.
* ``sharepoint.copy_template`` returns the target if it already exists; otherwise it starts Graph's
  copy action with ``conflictBehavior=fail`` and follows the async monitor URL (unauthenticated, as
  Graph requires) until the copy completes. A ``nameAlreadyExists`` answer (immediate or from the
  monitor) means a concurrent run made it: success.

Paths are relative to the drive (document library) root, ``/``-separated; characters SharePoint forbids
in names (``" * : < > ? \\ |``) become ``-`` and trailing dots/spaces are dropped, so an opportunity name
can go straight into a path. The drive is ``config.drive_id`` (or the ``drive_id`` param).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.base import ActionContext, ProviderError, action, raise_for_status

ILLEGAL = re.compile(r'["*:<>?\\|]')
CONFLICT = "@microsoft.graph.conflictBehavior"
ALREADY_EXISTS = "nameAlreadyExists"
DONE, FAILED = "completed", "failed"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnsureFolders(_Params):
    """Make sure a folder tree exists under ``root`` (``root`` itself included)."""

    root: str = Field(default="", max_length=400, description="e.g. 'Opportunities/Acme - opp-1'")
    folders: list[str] = Field(default_factory=list, max_length=500,
                               description="paths relative to root, e.g. '01 Prospect/Research'")
    drive_id: str | None = None


class CopyTemplate(_Params):
    """Copy a template file to ``root/target`` unless that file already exists."""

    source: str = Field(min_length=1, max_length=400, description="template path from the drive root")
    target: str = Field(min_length=1, max_length=400,
                        description="path relative to root; ending in '/' keeps the template's file name")
    root: str = Field(default="", max_length=400)
    drive_id: str | None = None
    source_drive_id: str | None = Field(default=None, description="the templates' library, if another one")


def clean_path(path: str) -> str:
    """A drive path with names SharePoint accepts (illegal characters → '-', no empty segments)."""
    segments = (ILLEGAL.sub("-", s).strip().rstrip(". ") for s in path.split("/"))
    return "/".join(s for s in segments if s)


def folder_plan(root: str, folders: list[str]) -> list[str]:
    """Every folder path to ensure — root, each folder and their parents — once, parents first."""
    plan: dict[str, str] = {}
    for folder in [""] + folders:
        full = clean_path(f"{root}/{folder}")
        parts = full.split("/") if full else []
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            plan.setdefault(prefix.lower(), prefix)  # SharePoint names are case-insensitive
    return list(plan.values())


@action("sharepoint.ensure_folders", EnsureFolders)
async def ensure_folders(ctx: ActionContext, params: EnsureFolders) -> dict:
    """``{"created": [...], "existing": [...], "root": {"id", "web_url"} | None}``."""
    graph = await Graph.open(ctx, params.drive_id)
    created, existing = await graph.ensure(folder_plan(params.root, params.folders))
    root = clean_path(params.root)
    item = await graph.get(root) if root else None
    return {"created": created, "existing": existing,
            "root": {"id": item["id"], "web_url": item.get("webUrl")} if item else None}


@action("sharepoint.copy_template", CopyTemplate)
async def copy_template(ctx: ActionContext, params: CopyTemplate) -> dict:
    """``{"id", "name", "web_url", "path", "created"}`` of the copy (``created`` False if it was there)."""
    graph = await Graph.open(ctx, params.drive_id)
    source = clean_path(params.source)
    target = clean_path(f"{params.root}/{params.target}")
    if params.target.endswith("/"):
        target = f"{target}/{source.rsplit('/', 1)[-1]}".lstrip("/")
    parent, _, name = target.rpartition("/")
    if (item := await graph.get(target)) is not None:
        return _copied(item, target, created=False)
    if parent:
        await graph.ensure(folder_plan(parent, []))
    source_drive = params.source_drive_id or graph.drive
    template = await graph.get(source, drive=source_drive)
    if template is None:
        raise ProviderError(404, f"template {source!r} not found in drive {source_drive}",
                            code="itemNotFound")
    parent_item = await graph.get(parent)
    if parent_item is None:
        raise ProviderError(404, f"folder {parent!r} not found", code="itemNotFound")
    response = await graph.request(
        "POST", f"/drives/{source_drive}/items/{template['id']}/copy", params={CONFLICT: "fail"},
        json={"parentReference": {"driveId": graph.drive, "id": parent_item["id"]}, "name": name})
    if _code(response) == ALREADY_EXISTS:
        return _copied(await graph.require(target), target, created=False)
    raise_for_status(response)
    resource_id, exists = await graph.wait(response.headers["Location"])
    item = await graph.request_json("GET", f"/drives/{graph.drive}/items/{resource_id}") if resource_id else (
        await graph.require(target))
    return _copied(item, target, created=not exists)


def _copied(item: dict[str, Any], path: str, *, created: bool) -> dict:
    return {"id": item["id"], "name": item.get("name"), "web_url": item.get("webUrl"), "path": path,
            "created": created}


def _code(response: httpx.Response) -> str | None:
    """Graph's ``error.code`` of an error answer."""
    if response.status_code < 400:
        return None
    try:
        return (response.json().get("error") or {}).get("code")
    except ValueError:
        return None


class Graph:
    """The few Graph drive calls the actions need, authenticated with the connection's token."""

    def __init__(self, ctx: ActionContext, drive: str, token: str) -> None:
        self.ctx, self.drive, self.token = ctx, drive, token

    @classmethod
    async def open(cls, ctx: ActionContext, drive_id: str | None) -> Graph:
        drive = drive_id or ctx.config.get("drive_id")
        if not drive:
            raise ProviderError(400, "no drive_id (set config.drive_id on the connection)",
                                code="missing_config")
        return cls(ctx, str(drive), await ctx.access_token())

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return await self.ctx.http.request(method, self.ctx.url(path), headers=headers, **kwargs)

    async def request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return raise_for_status(await self.request(method, path, **kwargs)).json()

    def by_path(self, path: str, drive: str | None = None) -> str:
        """Graph's path addressing: ``/drives/{d}/root`` or ``/drives/{d}/root:/a/b:``."""
        base = f"/drives/{drive or self.drive}/root"
        return f"{base}:/{quote(path)}:" if path else base

    async def get(self, path: str, drive: str | None = None) -> dict[str, Any] | None:
        """The item at ``path``, or None if there is none."""
        response = await self.request("GET", self.by_path(path, drive))
        if response.status_code == 404:
            return None
        return raise_for_status(response).json()

    async def require(self, path: str) -> dict[str, Any]:
        item = await self.get(path)
        if item is None:
            raise ProviderError(409, f"{path!r} is reported as existing but cannot be read",
                                code=ALREADY_EXISTS)
        return item

    async def ensure(self, paths: list[str]) -> tuple[list[str], list[str]]:
        """Create each folder (parents first); an existing folder counts as success."""
        created, existing = [], []
        for path in paths:
            parent, _, name = path.rpartition("/")
            response = await self.request("POST", f"{self.by_path(parent)}/children",
                                          json={"name": name, "folder": {}, CONFLICT: "fail"})
            if _code(response) == ALREADY_EXISTS:
                if "folder" not in await self.require(path):
                    raise ProviderError(409, f"{path!r} exists and is a file, not a folder",
                                        code=ALREADY_EXISTS)
                existing.append(path)
                continue
            raise_for_status(response)
            created.append(path)
        return created, existing

    async def wait(self, monitor_url: str) -> tuple[str | None, bool]:
        """Follow a copy's monitor URL: (resourceId of the new item, False) or (None, True) if the name existed."""
        interval = float(self.ctx.config.get("copy_poll_interval_s", 1.0))
        deadline = time.monotonic() + float(self.ctx.config.get("copy_timeout_s", 120))
        while True:
            response = await self.ctx.http.get(monitor_url)  # no Authorization: the monitor refuses one
            if response.status_code == 303:
                return None, False
            status = raise_for_status(response).json()
            if status.get("status") == DONE:
                return status.get("resourceId"), False
            if status.get("status") == FAILED:
                error = status.get("error") or {}
                if error.get("code") == ALREADY_EXISTS:
                    return None, True
                raise ProviderError(502, f"copy failed: {error.get('message') or error}",
                                    code=error.get("code"))
            if time.monotonic() > deadline:
                raise ProviderError(504, "copy still in progress", code="copyTimeout")
            await asyncio.sleep(float(response.headers.get("Retry-After", interval)))
