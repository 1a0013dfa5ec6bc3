"""SharePoint / OneDrive sync model: the documents of a drive (Graph ``/drives/{id}/root/delta``).

What is not standard: the drive is ``config.drive_id``; the first request is the delta query, then the
cursor is Graph's own link (``LinkCursor``: ``@odata.nextLink`` while paging, ``@odata.deltaLink`` for
the next run), followed only if it points at the connection's Graph endpoint (the token goes with it). A file that is new, changed or deleted raises ``document.changed`` through a Graph
change notification for that item (what ``connectors.events`` maps for a webhook). Graph's own
notifications carry no item version, so the two paths cannot share an id: the sync's event id is
``sync:<item id>:<eTag>`` (``:deleted`` for a deletion), stable across re-reads of the same version.
"""

from __future__ import annotations

from typing import Any

from connectors.base import ActionContext, ProviderError, raise_for_status
from connectors.sync import LinkCursor, Page, ProviderEvent, SyncRecord, parse_time, sync_model


def document_events(item: dict[str, Any], previous: dict[str, Any] | None) -> list[ProviderEvent]:
    """A file (not a folder) that is new, changed or deleted → a Graph change notification for it."""
    deleted = "deleted" in item
    if not ("file" in item or (deleted and previous is not None and "file" in previous)):
        return []
    if deleted and previous is None:
        return []
    drive = (item.get("parentReference") or {}).get("driveId", "")
    change = "deleted" if deleted else "created" if previous is None else "updated"
    version = "deleted" if deleted else item.get("eTag") or item.get("lastModifiedDateTime") or ""
    note = {
        "subscriptionId": "sync", "changeType": change, "resource": f"drives/{drive}/items/{item['id']}",
        "resourceData": {"@odata.type": "#Microsoft.Graph.DriveItem", "id": item["id"]},
    }
    return [ProviderEvent(f"sync:{item['id']}:{version}", f"change.{change}", {"value": [note]})]


@sync_model("sharepoint.documents", events=document_events)
async def documents(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Every item of the drive on the first run; after that, what changed since the last delta link."""
    link = LinkCursor.load(cursor).link
    if link is None:
        drive = ctx.config.get("drive_id")
        if not drive:
            raise ProviderError(400, "no drive_id (set config.drive_id on the connection)", code="missing_config")
        request = ctx.http.get(ctx.url(f"/drives/{drive}/root/delta"), params={"$top": str(page_size)},
                               headers=await ctx.auth_headers())
    elif not link.startswith(ctx.base_url.rstrip("/") + "/"):
        raise ProviderError(400, "the stored delta link does not point at the connection's Graph endpoint",
                            code="foreign_link")
    else:
        request = ctx.http.get(link, headers=await ctx.auth_headers())
    doc = raise_for_status(await request).json()
    records = [SyncRecord(i["id"], i, parse_time(i.get("lastModifiedDateTime"))) for i in doc.get("value") or []]
    return LinkCursor.page(records, doc.get("@odata.nextLink"), doc.get("@odata.deltaLink"))
