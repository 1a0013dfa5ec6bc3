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

Change notifications (Graph subscriptions on the drive's root, ``changeType`` ``updated``):

* ``sharepoint.create_subscription`` subscribes ``notification_url`` (also the ``lifecycleNotificationUrl``)
  with the connection's newest ``client_state`` secret as ``clientState``. Idempotent: a subscription of this
  app on the same drive and URL found in ``GET /subscriptions`` is renewed instead of making a second one.
* ``sharepoint.renew_subscription`` moves a subscription's ``expirationDateTime`` out (``PATCH``); Graph's 404
  means the subscription is gone, so a new one is created.
* ``sharepoint.get_item`` says where a changed item lives (its path from the drive root) and whether this
  connection's own app wrote it last (a template copy, not a user's document).

Lifetimes default to 4,230 minutes (just under 3 days) and may go up to 42,300 minutes (under 30 days),
Graph's documented maximum for driveItem; the shorter default bounds how long a subscription nobody renews
(a deleted connection) keeps posting.

Webhooks (``GraphWebhooks``, scheme ``microsoft``): Graph signs nothing; every notification must echo one of
the subscription's ``clientState`` values (the connection's ``client_state`` secret). The ``validationToken``
handshake (``?validationToken=`` on a new subscription's URL) is echoed as text before anything else; a
collection is split into one event per notification (``clientState`` redacted) and acknowledged with 202.
Change notifications on a driveItem or a SharePoint list map to ``document.changed`` (naming the drive item,
or ``drive_root`` when only the root is named: a delta query finds the items), lifecycle notifications to
``graph.lifecycle``. Follow-ups, done by ``WebhookEventWorkflow`` before it signals: ``reauthorizationRequired``
→ ``renew_subscription``, ``subscriptionRemoved`` → ``create_subscription``, ``missed`` → ``sync_documents``; a
``document.changed`` naming an item → ``locate_document``, one naming only a drive's root → ``sync_documents``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors import signing
from connectors.base import ActionContext, ProviderError, action, raise_for_status
from connectors.events import (
    REDACTED,
    Credentials,
    Delivery,
    DomainEvent,
    EventTooLarge,
    InboxEvent,
    MalformedEvent,
    MalformedRequest,
    Mapped,
    Reply,
    WebhookScheme,
    digest,
    dump,
    parse_json,
    webhook_scheme,
)
from connectors.signing import SignatureError
from hub.egress import DestinationRefused

ILLEGAL = re.compile(r'["*:<>?\\|]')
CONFLICT = "@microsoft.graph.conflictBehavior"
ALREADY_EXISTS = "nameAlreadyExists"
DONE, FAILED = "completed", "failed"
SUBSCRIPTION_MINUTES = 4230
MAX_SUBSCRIPTION_MINUTES = 42300


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


class Subscribe(_Params):
    """Subscribe ``notification_url`` to changes of the drive (its root), lifecycle notifications included."""

    notification_url: str = Field(min_length=1, max_length=2000, pattern=r"^https?://",
                                  description="the hub's /webhooks/microsoft/{connection_id}")
    minutes: int = Field(default=SUBSCRIPTION_MINUTES, ge=1, le=MAX_SUBSCRIPTION_MINUTES,
                         description="lifetime from now")
    drive_id: str | None = None


class RenewSubscription(Subscribe):
    """Extend a subscription by ``minutes`` from now; recreate it (at ``notification_url``) if Graph lost it."""

    subscription_id: str = Field(min_length=1, max_length=200)


class GetItem(_Params):
    """Where a drive item is (its path from the drive root) and who wrote it last."""

    item_id: str = Field(min_length=1, max_length=200)
    drive_id: str | None = None


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


#: The outputs of ``sharepoint.copy_template`` (``_copied``) and the subscription actions (``_subscription``).
_COPIED = {"id": str, "name": str, "web_url": str, "path": str, "created": bool}
_SUBSCRIPTION = {"id": str, "resource": str, "expiration": str, "created": bool}


@action("sharepoint.ensure_folders", EnsureFolders, output={"created": list, "existing": list, "root": object})
async def ensure_folders(ctx: ActionContext, params: EnsureFolders) -> dict:
    """``{"created": [...], "existing": [...], "root": {"id", "web_url"} | None}``."""
    graph = await Graph.open(ctx, params.drive_id)
    created, existing = await graph.ensure(folder_plan(params.root, params.folders))
    root = clean_path(params.root)
    item = await graph.get(root) if root else None
    return {"created": created, "existing": existing,
            "root": {"id": item["id"], "web_url": item.get("webUrl")} if item else None}


@action("sharepoint.copy_template", CopyTemplate, output=_COPIED)
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


@action("sharepoint.create_subscription", Subscribe, output=_SUBSCRIPTION)
async def create_subscription(ctx: ActionContext, params: Subscribe) -> dict:
    """``{"id", "resource", "expiration", "created"}``; ``created`` False if a live subscription was renewed."""
    await _check_notification_url(ctx, params.notification_url)
    graph = await Graph.open(ctx, params.drive_id)
    resource = f"drives/{graph.drive}/root"
    expiry = _expiry(params.minutes)
    for existing in await graph.subscriptions():
        same_url = existing.get("notificationUrl") == params.notification_url
        if same_url and str(existing.get("resource") or "").strip("/").lower() == resource.lower():
            renewed = await graph.renew(existing["id"], expiry)
            if renewed is not None:
                return _subscription(renewed, created=False)
    body = {"changeType": "updated", "notificationUrl": params.notification_url,
            "lifecycleNotificationUrl": params.notification_url, "resource": resource,
            "expirationDateTime": expiry, "clientState": _client_state(ctx)}
    return _subscription(await graph.request_json("POST", "/subscriptions", json=body), created=True)


@action("sharepoint.renew_subscription", RenewSubscription, output=_SUBSCRIPTION)
async def renew_subscription(ctx: ActionContext, params: RenewSubscription) -> dict:
    """Like ``create_subscription``'s answer; ``created`` True when Graph no longer had the subscription."""
    graph = await Graph.open(ctx, params.drive_id)
    renewed = await graph.renew(params.subscription_id, _expiry(params.minutes))
    if renewed is None:
        return await create_subscription(ctx, Subscribe.model_validate(params.model_dump(exclude={"subscription_id"})))
    return _subscription(renewed, created=False)


async def _check_notification_url(ctx: ActionContext, url: str) -> None:
    """Graph may only be aimed at this connection's own webhook endpoint; an address (rather than a name, which
    Graph resolves, not the hub) must be one the egress policy admits."""
    parts = urlsplit(url)
    if not parts.path.endswith(f"/webhooks/{ctx.provider}/{ctx.connection_id}"):
        raise ProviderError(400, f"notification_url must be this connection's /webhooks/{ctx.provider}/"
                                 f"{ctx.connection_id}", code="notification_url_refused")
    try:
        ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return
    try:
        await ctx.egress.admit(url)
    except DestinationRefused as exc:
        raise ProviderError(400, f"notification_url refused: {exc}", code="notification_url_refused") from None


@action("sharepoint.get_item", GetItem, output={
    "id": str, "name": str, "path": str, "folder": bool, "web_url": str, "by_hub": bool, "deleted": bool})
async def get_item(ctx: ActionContext, params: GetItem) -> dict:
    """``{"id", "name", "path", "folder", "web_url", "by_hub", "deleted"}``; ``path`` None once deleted.

    ``by_hub`` is true when the last write came from this connection's own app (``config.client_id``).
    """
    graph = await Graph.open(ctx, params.drive_id)
    response = await graph.request("GET", f"/drives/{graph.drive}/items/{quote(params.item_id, safe='')}")
    item = None if response.status_code == 404 else raise_for_status(response).json()
    if item is None or "deleted" in item:
        return {"id": params.item_id, "name": None, "path": None, "folder": False, "web_url": None,
                "by_hub": False, "deleted": True}
    parent = str((item.get("parentReference") or {}).get("path") or "")
    folder = unquote(parent.split("root:", 1)[1]).strip("/") if "root:" in parent else ""
    path = "" if "root" in item else f"{folder}/{item.get('name', '')}".lstrip("/")
    writer = ((item.get("lastModifiedBy") or {}).get("application") or {}).get("id")
    return {"id": item["id"], "name": item.get("name"), "path": path, "folder": "folder" in item,
            "web_url": item.get("webUrl"), "by_hub": bool(writer) and writer == ctx.config.get("client_id"),
            "deleted": False}


def _expiry(minutes: int) -> str:
    at = datetime.now(UTC) + timedelta(minutes=minutes)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _client_state(ctx: ActionContext) -> str:
    """The newest ``client_state`` (else ``webhook_secrets``) value: what every notification must echo."""
    for name in ("client_state", "webhook_secrets"):
        values = [line.strip() for line in (ctx.secret(name) or "").splitlines() if line.strip()]
        if values:
            return values[0]
    raise ProviderError(400, "the connection has no client_state secret to give Graph as clientState",
                        code="missing_secret")


def _subscription(sub: dict[str, Any], *, created: bool) -> dict:
    return {"id": sub["id"], "resource": sub.get("resource"), "expiration": sub.get("expirationDateTime"),
            "created": created}


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

    async def subscriptions(self) -> list[dict[str, Any]]:
        """This app's subscriptions (every page of ``GET /subscriptions``)."""
        found: list[dict[str, Any]] = []
        page = await self.request_json("GET", "/subscriptions")
        while True:
            found += page.get("value") or []
            link = page.get("@odata.nextLink")
            if not link:
                return found
            if not link.startswith(self.ctx.base_url.rstrip("/") + "/"):
                raise ProviderError(502, "a subscriptions page link leaves the connection's Graph endpoint",
                                    code="foreign_link")
            response = await self.ctx.http.get(link, headers={"Authorization": f"Bearer {self.token}"})
            page = raise_for_status(response).json()

    async def renew(self, subscription_id: str, expiry: str) -> dict[str, Any] | None:
        """``PATCH`` the subscription's expiry; None if Graph no longer has it."""
        response = await self.request("PATCH", f"/subscriptions/{quote(subscription_id, safe='')}",
                                      json={"expirationDateTime": expiry})
        if response.status_code == 404:
            return None
        return raise_for_status(response).json()

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


# --- webhooks (change notifications) -----------------------------------------------------------------------

MAX_VALIDATION_TOKEN = 2048
GRAPH_LIFECYCLE_FOLLOW_UPS: dict[str, str] = {
    "reauthorizationRequired": "renew_subscription",
    "subscriptionRemoved": "create_subscription",
    "missed": "sync_documents",
}


def graph_notifications(body: bytes) -> list[dict]:
    """The notifications of a Microsoft Graph / SharePoint change-notification collection."""
    doc = parse_json(body)
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, list) or not all(isinstance(n, dict) for n in value):
        raise MalformedEvent("a Graph notification collection has a 'value' list of objects")
    return value


def _graph_event(note: dict, ctype: str) -> InboxEvent:
    stored = {k: (REDACTED if k == "clientState" else v) for k, v in note.items()}
    if note.get("lifecycleEvent"):
        kind = f"lifecycle.{note['lifecycleEvent']}"
    else:
        kind = f"change.{note.get('changeType') or 'updated'}"
    raw = dump({"value": [stored]})
    event_id = note.get("id") or f"{note.get('subscriptionId', '')}:{digest(raw)}"
    return InboxEvent(str(event_id), kind, raw, ctype or "application/json")


LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
#: ``drives/{drive}/items/{item}``, ``/drive/root``, ``sites/{site}/drive/root``, ``/me/drive/items/{item}``...
DRIVE_RESOURCE = re.compile(r"(?:^|/)(?:drives/(?P<drive>[^/]+)|drive)/(?:items/(?P<item>[^/]+)|(?P<root>root))/?$",
                            re.IGNORECASE)


def _drive_target(resource: str, resource_data: dict) -> dict:
    """Which drive and item a driveItem notification is about; ``drive_root`` when it names no item."""
    found = DRIVE_RESOURCE.search(resource)
    drive = found["drive"] if found else None
    item = (found["item"] if found else None) or resource_data.get("id")
    return {"drive_id": drive, "item_id": item, "drive_root": bool(found and found["root"]) and not item}


def _map_graph(note: dict) -> Mapped:
    base = {"subscription_id": note.get("subscriptionId"), "tenant_id": note.get("tenantId")}
    lifecycle = note.get("lifecycleEvent")
    if lifecycle:
        if lifecycle not in LIFECYCLE_EVENTS:
            return Mapped(ignored=f"unknown Graph lifecycle event {lifecycle!r}")
        data = {**base, "lifecycle_event": lifecycle, "expires_at": note.get("subscriptionExpirationDateTime")}
        return Mapped(events=[DomainEvent(type="graph.lifecycle", data=data)])
    resource = str(note.get("resource") or "")
    odata = str((note.get("resourceData") or {}).get("@odata.type") or "").lower()
    is_drive = "drive" in resource.lower() or odata.endswith("driveitem")
    is_sp_list = bool(note.get("siteUrl") or note.get("webId"))
    if not (is_drive or is_sp_list):
        return Mapped(ignored=f"Graph resource {resource!r} is not a document (driveItem or SharePoint list)")
    data = {
        **base,
        "resource": resource,
        "change_type": note.get("changeType") or "updated",
        "site_url": note.get("siteUrl"),
        "web_id": note.get("webId"),
    }
    if is_drive:
        data.update(_drive_target(resource, note.get("resourceData") or {}))
    return Mapped(events=[DomainEvent(type="document.changed", data=data)])


@webhook_scheme
class GraphWebhooks(WebhookScheme):
    """Microsoft Graph's change-notification scheme (see the module docstring)."""

    name = "microsoft"
    description = "Microsoft Graph clientState in every notification (+ validationToken handshake)"
    ack_status = 202

    def challenge(self, query: dict[str, str]) -> Reply | None:
        """Echo the ``validationToken`` (any case: SharePoint's lists send it lower-case) as text."""
        for key, value in query.items():
            if key.lower() == "validationtoken":
                if len(value) > MAX_VALIDATION_TOKEN:
                    raise MalformedRequest("validationToken too long")
                return Reply(value)
        return None

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Every notification carries one of the connection's ``clientState`` values."""
        try:
            notes = graph_notifications(delivery.body)
        except EventTooLarge:
            raise
        except MalformedEvent:
            raise SignatureError("missing_signature", "not a Graph notification collection") from None
        signing.verify_graph_client_state(notes, creds.client_states or creds.webhook_secrets)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event per notification."""
        ctype = headers.get("content-type", "")
        return [_graph_event(n, ctype) for n in graph_notifications(body)]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """``document.changed`` or ``graph.lifecycle``."""
        return _map_graph(graph_notifications(body)[0])

    def follow_up(self, event: DomainEvent) -> str | None:
        """Subscription upkeep for lifecycle events; locating (or syncing) the changed document."""
        if event.type == "graph.lifecycle":
            return GRAPH_LIFECYCLE_FOLLOW_UPS.get(str(event.data.get("lifecycle_event")))
        if event.type == "document.changed" and event.data.get("item_id"):
            return "locate_document"
        if event.type == "document.changed" and event.data.get("drive_root"):
            return "sync_documents"
        return None

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """The connection's newest ``clientState`` put in every notification."""
        states = creds.client_states or creds.webhook_secrets
        if not states:
            raise ValueError("the connection has no client_state (or webhook_secrets) to put in the notifications")
        doc = json.loads(body)
        for note in doc.get("value", []):
            note["clientState"] = states[0]
        return json.dumps(doc).encode(), {"content-type": content_type}
