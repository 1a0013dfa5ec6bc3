"""Fake Microsoft Graph v1.0 drive API (https://graph.microsoft.com/v1.0/drives/{drive-id}/...).

Wire format as Graph's: `Authorization: Bearer <token>`; items addressed by id (`items/{id}`), by path
(`root:/a/b` or `items/{id}:/a/b:` followed by `/children`, `/copy`...); driveItem JSON (`id`, `name`,
`folder`/`file`, `parentReference`, `webUrl`, `eTag`); errors as `{"error": {"code", "message",
"innerError": {...}}}` (404 `itemNotFound`, 409 `nameAlreadyExists`, 401 `InvalidAuthenticationToken`);
429 with `Retry-After`. Create honours `@microsoft.graph.conflictBehavior` (fail|replace|rename, default
fail); copy answers 202 with a `Location` monitor URL (unauthenticated, as Graph's) that reports
`inProgress` for `copy_polls` polls then `completed` + `resourceId`, or `failed` + `error`.
Lists page with `$top` and `@odata.nextLink`; `root/delta` ends with `@odata.deltaLink`.
Items carry `createdBy`/`lastModifiedBy` identity sets: the app (`application.id` = `APP_ID`) for what the API
wrote, a user for what a test puts there as a person would (`add_file`, `edit`).

Subscriptions (`/v1.0/subscriptions`) as Graph's for a drive: `POST` needs `changeType` `updated`,
`notificationUrl` (and `lifecycleNotificationUrl`, if given) on https, `resource` the drive's root
(`drives/{id}/root`) and an `expirationDateTime` in the future within 42,300 minutes; it answers 201 with the
subscription resource. `GET` lists them, `GET|PATCH|DELETE /subscriptions/{id}` read, renew (only
`expirationDateTime`, same limits) and delete one; an unknown id is 404 `ResourceNotFound`.
Point httpx at `fake.url + "/v1.0"`.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token

DRIVE_ID = "b!fAkEdRiVe0000000000000000000000000000000000000000000000000000"
SITE_URL = "https://fulqrun.sharepoint.com/sites/Sales/Shared%20Documents"
APP_ID = "a1b2c3d4-0000-4000-8000-00000000f00d"  # the Entra application the tokens belong to
APP = {"application": {"id": APP_ID, "displayName": "FulQrun Hub"}}
USER = {"user": {"id": "6f1b0c4e-0000-4000-8000-0000000000aa", "displayName": "Pat Seller",
                 "email": "pat@fulqrun.example"}}
MAX_SUBSCRIPTION_MINUTES = 42300  # driveItem
INVALID_NAME_CHARS = set('"*:<>?/\\|')


class GraphFake(FakeServer):
    """One SharePoint document library (drive) with a folder/file tree in memory."""

    def __init__(self, tokens: tuple[str, ...] = ("graph-test-token",), copy_polls: int = 1) -> None:
        super().__init__(tokens)
        self.copy_polls = copy_polls
        self.items: dict[str, dict[str, Any]] = {}
        self.changes: list[str] = []  # item ids in change order; a delta token is an index into it
        self.operations: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.clock = datetime(2024, 1, 1, tzinfo=UTC)
        self.root_id = self._new_item(None, "root", folder=True)["id"]

    # --- data ----------------------------------------------------------------------------------
    def _now(self) -> str:
        self.clock += timedelta(seconds=1)
        return self.clock.isoformat().replace("+00:00", "Z")

    def _new_item(self, parent_id: str | None, name: str, *, folder: bool, size: int = 0,
                  content: bytes = b"", by: dict[str, Any] = APP) -> dict[str, Any]:
        item_id = "01" + secrets.token_hex(16).upper()
        now = self._now()
        item: dict[str, Any] = {"id": item_id, "name": name, "parent_id": parent_id, "createdDateTime": now,
                                "lastModifiedDateTime": now, "folder": folder, "size": size, "content": content,
                                "deleted": False, "etag_n": 1, "created_by": by, "modified_by": by}
        self.items[item_id] = item
        self.changes.append(item_id)
        return item

    def _children(self, item_id: str) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i["parent_id"] == item_id and not i["deleted"]]

    def _child(self, item_id: str, name: str) -> dict[str, Any] | None:
        return next((i for i in self._children(item_id) if i["name"].lower() == name.lower()), None)

    def path_of(self, item_id: str) -> str:
        """Path from the drive root ('' for the root)."""
        parts = []
        item = self.items[item_id]
        while item["parent_id"] is not None:
            parts.append(item["name"])
            item = self.items[item["parent_id"]]
        return "/".join(reversed(parts))

    def find(self, path: str, start: str | None = None) -> dict[str, Any] | None:
        """The live item at `path` (case-insensitive, as SharePoint), or None."""
        item = self.items[start or self.root_id]
        for part in [p for p in path.strip("/").split("/") if p]:
            found = self._child(item["id"], part)
            if found is None:
                return None
            item = found
        return item

    def add_file(self, path: str, content: bytes = b"template", by: dict[str, Any] = USER) -> dict[str, Any]:
        """Create a file (and its missing parent folders) at `path`, as a user uploading it (or as `by`)."""
        *folders, name = path.strip("/").split("/")
        parent = self.items[self.root_id]
        for part in folders:
            parent = self._child(parent["id"], part) or self._new_item(parent["id"], part, folder=True, by=by)
        return self._new_item(parent["id"], name, folder=False, size=len(content), content=content, by=by)

    def add_folder(self, path: str) -> dict[str, Any]:
        """Create the folder at `path` and its missing parents, as a user."""
        parent = self.items[self.root_id]
        for part in path.strip("/").split("/"):
            parent = self._child(parent["id"], part) or self._new_item(parent["id"], part, folder=True, by=USER)
        return parent

    def edit(self, item_id: str, content: bytes = b"edited") -> dict[str, Any]:
        """A user saves new content into an existing file (it shows in delta as changed)."""
        item = self.items[item_id]
        item.update(content=content, size=len(content))
        self._touch(item, by=USER)
        return item

    def delete(self, item_id: str) -> None:
        """Delete an item (it shows in delta as deleted)."""
        self.items[item_id]["deleted"] = True
        self.changes.append(item_id)

    def folder_paths(self) -> list[str]:
        """Every live folder's path (root excluded), sorted."""
        return sorted(self.path_of(i["id"]) for i in self.items.values()
                      if i["folder"] and not i["deleted"] and i["parent_id"] is not None)

    def _touch(self, item: dict[str, Any], by: dict[str, Any] = APP) -> None:
        item["lastModifiedDateTime"] = self._now()
        item["modified_by"] = by
        item["etag_n"] += 1
        self.changes.append(item["id"])

    def _view(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["deleted"]:
            return {"id": item["id"], "name": item["name"], "deleted": {"state": "deleted"},
                    "parentReference": {"driveId": DRIVE_ID, "driveType": "documentLibrary",
                                        "id": item["parent_id"]}}
        path = self.path_of(item["id"])
        view: dict[str, Any] = {
            "id": item["id"], "name": item["name"], "createdDateTime": item["createdDateTime"],
            "lastModifiedDateTime": item["lastModifiedDateTime"],
            "eTag": f"\"{{{item['id'][-8:]}}},{item['etag_n']}\"", "cTag": f"\"c:{{{item['id'][-8:]}}},1\"",
            "webUrl": f"{SITE_URL}/{quote(path)}".rstrip("/"), "size": item["size"],
            "createdBy": item["created_by"], "lastModifiedBy": item["modified_by"],
        }
        if item["parent_id"] is None:
            view["root"] = {}
        else:
            parent_path = self.path_of(item["parent_id"])
            view["parentReference"] = {"driveId": DRIVE_ID, "driveType": "documentLibrary", "id": item["parent_id"],
                                       "path": f"/drives/{DRIVE_ID}/root:" + (f"/{parent_path}" if parent_path else "")}
        if item["folder"]:
            view["folder"] = {"childCount": len(self._children(item["id"]))}
        else:
            view["file"] = {"mimeType": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
        return view

    # --- wire ----------------------------------------------------------------------------------
    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": {"code": code, "message": message, "innerError": {
            "date": self.clock.isoformat().replace("+00:00", ""), "request-id": str(uuid.uuid4()),
            "client-request-id": str(uuid.uuid4())}}}, status_code=status)

    def rate_limit_error(self, retry_after: int) -> Response:
        response = self.error(429, "TooManyRequests", "Too many requests")
        response.headers["Retry-After"] = str(retry_after)
        return response

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1.0/drives/{drive}/{rest:path}", self.drive, methods=["GET", "POST"]),
            Route("/monitor/{op}", self.monitor, methods=["GET"]),
            Route("/v1.0/subscriptions", self.subscriptions_collection, methods=["GET", "POST"]),
            Route("/v1.0/subscriptions/{sub}", self.subscription, methods=["GET", "PATCH", "DELETE"]),
        ]

    def _not_found(self) -> Response:
        return self.error(404, "itemNotFound", "The resource could not be found.")

    def _resolve(self, rest: str) -> tuple[dict[str, Any] | None, str]:
        """(addressed item or None, the verb after it: '', '/children', '/copy', '/delta')."""
        if rest.startswith("root"):
            item, remainder = self.items[self.root_id], rest[4:]
        elif rest.startswith("items/"):
            tail = rest[6:]
            cut = min((i for i in (tail.find("/"), tail.find(":")) if i >= 0), default=len(tail))
            item_id, remainder = tail[:cut], tail[cut:]
            item = self.items[self.root_id] if item_id == "root" else self.items.get(item_id)
            if item is None or item["deleted"]:
                return None, ""
        else:
            return None, ""
        if remainder.startswith(":"):
            path, _, verb = remainder[1:].partition(":")
            return self.find(path, item["id"]), verb
        return item, remainder

    async def drive(self, request: Request) -> Response:
        if bearer_token(request) not in self.tokens:
            return self.error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        if request.path_params["drive"] != DRIVE_ID:
            return self.error(404, "itemNotFound", "The drive could not be found.")
        item, verb = self._resolve(request.path_params["rest"])
        if item is None:
            return self._not_found()
        method = request.method
        if verb == "" and method == "GET":
            return JSONResponse({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#driveItem",
                                 **self._view(item)})
        if verb == "/children" and method == "GET":
            return self._list_children(request, item)
        if verb == "/children" and method == "POST":
            return await self._create_child(request, item)
        if verb == "/copy" and method == "POST":
            return await self._copy(request, item)
        if verb == "/delta" and method == "GET" and item["id"] == self.root_id:
            return self._delta(request)
        return self.error(400, "invalidRequest", f"Invalid request: {method} {verb}")

    def _list_children(self, request: Request, item: dict[str, Any]) -> Response:
        if not item["folder"]:
            return self.error(400, "invalidRequest", "The item is not a folder.")
        top = int(request.query_params.get("$top", 200))
        skip = int(request.query_params.get("$skiptoken", 0))
        children = sorted(self._children(item["id"]), key=lambda i: i["name"].lower())
        body: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#drives/children",
                                "value": [self._view(c) for c in children[skip:skip + top]]}
        if skip + top < len(children):
            body["@odata.nextLink"] = (f"{str(request.base_url).rstrip('/')}{request.url.path}"
                                       f"?$top={top}&$skiptoken={skip + top}")
        return JSONResponse(body)

    async def _create_child(self, request: Request, parent: dict[str, Any]) -> Response:
        if not parent["folder"]:
            return self.error(400, "invalidRequest", "The parent item is not a folder.")
        body = await request.json()
        name = str(body.get("name", ""))
        behavior = body.get("@microsoft.graph.conflictBehavior") or request.query_params.get(
            "@microsoft.graph.conflictBehavior", "fail")
        if not name or name != name.strip() or name.endswith(".") or INVALID_NAME_CHARS & set(name):
            return self.error(400, "invalidRequest", "The provided name cannot contain any illegal characters.")
        if "folder" not in body and "file" not in body:
            return self.error(400, "invalidRequest", "A folder or file facet is required.")
        existing = self._child(parent["id"], name)
        if existing is not None:
            if behavior == "fail":
                return self.error(409, "nameAlreadyExists",
                                  "The specified item name already exists. Please use a different name.")
            if behavior == "replace":
                self._touch(existing)
                return JSONResponse(self._view(existing), status_code=200)
            n = 1
            while self._child(parent["id"], f"{name} {n}") is not None:
                n += 1
            name = f"{name} {n}"
        item = self._new_item(parent["id"], name, folder="folder" in body)
        self._touch(parent)
        return JSONResponse(self._view(item), status_code=201)

    async def _copy(self, request: Request, source: dict[str, Any]) -> Response:
        body = await request.json()
        ref = body.get("parentReference") or {}
        target = self.items.get(ref.get("id", "")) if ref.get("id") else (
            self.find(ref["path"].split("root:", 1)[1]) if "root:" in ref.get("path", "") else None)
        if target is None or target["deleted"] or not target["folder"]:
            return self.error(400, "invalidRequest", "Invalid parentReference.")
        behavior = request.query_params.get("@microsoft.graph.conflictBehavior") or body.get(
            "@microsoft.graph.conflictBehavior", "fail")
        op = str(uuid.uuid4())
        self.operations[op] = {"source": source["id"], "parent": target["id"],
                               "name": body.get("name") or source["name"], "behavior": behavior,
                               "polls_left": self.copy_polls, "status": "inProgress"}
        location = f"{str(request.base_url).rstrip('/')}/monitor/{op}"
        return Response(status_code=202, headers={"Location": location})

    def _copy_tree(self, source: dict[str, Any], parent_id: str, name: str) -> dict[str, Any]:
        copy = self._new_item(parent_id, name, folder=source["folder"], size=source["size"],
                              content=source["content"])
        for child in self._children(source["id"]):
            self._copy_tree(child, copy["id"], child["name"])
        return copy

    async def monitor(self, request: Request) -> Response:
        """The unauthenticated monitor of an async copy (an Authorization header is refused, as Graph's)."""
        if "authorization" in request.headers:
            return self.error(401, "unauthenticated", "The monitor URL does not accept an Authorization header.")
        op = self.operations.get(request.path_params["op"])
        if op is None:
            return self.error(404, "itemNotFound", "The operation could not be found.")
        if op["status"] == "inProgress" and op["polls_left"] > 0:
            op["polls_left"] -= 1
            return JSONResponse({"operation": "itemCopy", "percentageComplete": 50.0, "status": "inProgress"},
                                status_code=202)
        if op["status"] == "inProgress":
            existing = self._child(op["parent"], op["name"])
            if existing is not None and op["behavior"] == "fail":
                op.update(status="failed", error={"code": "nameAlreadyExists",
                                                  "message": "The specified item name already exists."})
            else:
                name = op["name"]
                if existing is not None and op["behavior"] == "replace":
                    self.delete(existing["id"])
                elif existing is not None:
                    stem, dot, ext = name.rpartition(".")
                    name = f"{stem} 1.{ext}" if dot else f"{name} 1"
                copy = self._copy_tree(self.items[op["source"]], op["parent"], name)
                op.update(status="completed", resourceId=copy["id"])
        body = {"operation": "itemCopy", "status": op["status"],
                "percentageComplete": 100.0 if op["status"] == "completed" else 0.0}
        if op["status"] == "completed":
            body["resourceId"] = op["resourceId"]
        else:
            body["error"] = op["error"]
        return JSONResponse(body)

    def _delta(self, request: Request) -> Response:
        """Changes since `token` (all live items without one; `token=latest`: none), paged by `$top`."""
        q = request.query_params
        token = q.get("token")
        snapshot = len(self.changes)
        if q.get("$skiptoken"):
            offset_s, _, snap_s = q["$skiptoken"].partition("-")
            offset, snapshot = int(offset_s), int(snap_s)
        else:
            offset = 0
        since = snapshot if token == "latest" else int(token or 0)
        ordered: dict[str, None] = {}
        for item_id in self.changes[since:snapshot]:
            ordered.pop(item_id, None)
            ordered[item_id] = None
        ids = [i for i in ordered if token or not self.items[i]["deleted"]]
        top = int(q.get("$top", 200))
        page = ids[offset:offset + top]
        base = f"{str(request.base_url).rstrip('/')}{request.url.path}"
        body: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(driveItem)",
                                "value": [self._view(self.items[i]) for i in page]}
        if offset + top < len(ids):
            body["@odata.nextLink"] = f"{base}?token={since}&$top={top}&$skiptoken={offset + top}-{snapshot}"
        else:
            body["@odata.deltaLink"] = f"{base}?token={snapshot}"
        return JSONResponse(body)

    # --- subscriptions -------------------------------------------------------------------------
    def add_subscription(self, notification_url: str, minutes: int = 60, resource: str | None = None) -> dict[str, Any]:
        """A live subscription, as if created earlier (by this app)."""
        sub_id = str(uuid.uuid4())
        expiry = (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
        self.subscriptions[sub_id] = {
            "id": sub_id, "resource": resource or f"drives/{DRIVE_ID}/root", "applicationId": APP_ID,
            "changeType": "updated", "clientState": None, "notificationUrl": notification_url,
            "lifecycleNotificationUrl": notification_url, "expirationDateTime": expiry,
            "creatorId": APP_ID, "latestSupportedTlsVersion": "v1_2", "notificationContentType": None,
            "includeResourceData": None, "encryptionCertificate": None, "encryptionCertificateId": None,
        }
        return self.subscriptions[sub_id]

    def _expiry_problem(self, value: object) -> str | None:
        try:
            at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"Invalid expirationDateTime {value!r}."
        now = datetime.now(UTC)
        if at.tzinfo is None or at <= now:
            return "Subscription expiration must be in the future."
        if at > now + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
            return f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in the future."
        return None

    def _sub_view(self, sub: dict[str, Any]) -> dict[str, Any]:
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity", **sub}

    async def subscriptions_collection(self, request: Request) -> Response:
        if bearer_token(request) not in self.tokens:
            return self.error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        if request.method == "GET":
            return JSONResponse({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
                                 "value": list(self.subscriptions.values())})
        body = await request.json()
        resource = str(body.get("resource") or "").strip("/")
        problems = [f"{k} is required." for k in ("changeType", "notificationUrl", "resource", "expirationDateTime")
                    if not body.get(k)]
        if body.get("changeType") and body["changeType"] != "updated":
            problems.append("Only 'updated' changeType is supported for driveItem.")
        for key in ("notificationUrl", "lifecycleNotificationUrl"):
            if body.get(key) and not str(body[key]).startswith("https://"):
                problems.append(f"{key} must be an HTTPS URL.")
        if resource and resource.lower() != f"drives/{DRIVE_ID}/root".lower():
            problems.append(f"Resource '{resource}' is not supported; subscribe to the root of the drive.")
        if body.get("expirationDateTime") and (problem := self._expiry_problem(body["expirationDateTime"])):
            problems.append(problem)
        if problems:
            return self.error(400, "InvalidRequest", " ".join(problems))
        sub = self.add_subscription(body["notificationUrl"], resource=resource)
        sub.update(clientState=body.get("clientState"), expirationDateTime=body["expirationDateTime"],
                   lifecycleNotificationUrl=body.get("lifecycleNotificationUrl"))
        return JSONResponse(self._sub_view(sub), status_code=201)

    async def subscription(self, request: Request) -> Response:
        if bearer_token(request) not in self.tokens:
            return self.error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        sub = self.subscriptions.get(request.path_params["sub"])
        if sub is None:
            return self.error(404, "ResourceNotFound", "The object was not found.")
        if request.method == "DELETE":
            del self.subscriptions[sub["id"]]
            return Response(status_code=204)
        if request.method == "PATCH":
            body = await request.json()
            if set(body) - {"expirationDateTime", "notificationUrl"}:
                return self.error(400, "InvalidRequest", "Only expirationDateTime and notificationUrl can be updated.")
            if problem := self._expiry_problem(body.get("expirationDateTime")):
                return self.error(400, "InvalidRequest", problem)
            sub.update(body)
        return JSONResponse(self._sub_view(sub))
