"""``generic_oauth2.records``: any provider's paged list endpoint, for connections that name it (``config.sync_path``).

One request per page: ``GET {base_url}{sync_path}?limit=<page size>[&cursor=<token>][&updated_since=<ISO time>]``
with the connection's bearer token, answered ``{"data": [{"id": ..., "updated_at": ...}, ...], "next_cursor":
"<token>" | null}`` (the shape of Slack's, Notion's and most cursor-paged lists). ``id`` is required; with
``updated_at`` (ISO-8601 or epoch seconds) a run after the backfill asks only for records updated since the newest
one it saw (a provider that ignores ``updated_since`` is read in full; unchanged records are not counted again).
The model raises no change events (a generic provider's webhooks carry their own).
"""

from __future__ import annotations

from typing import Any

from connectors.base import ActionContext, ProviderError, raise_for_status
from connectors.sync import Page, SyncRecord, WindowCursor, iso, parse_time, sync_model

PATH_KEY = "sync_path"  # the connection's config key naming the list endpoint


@sync_model("generic_oauth2.records")
async def records(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """One page of the connection's list endpoint (see the module docstring)."""
    window = WindowCursor.load(cursor)
    params: dict[str, Any] = {"limit": page_size}
    if window.token:
        params["cursor"] = window.token
    if window.since is not None:
        params["updated_since"] = iso(window.since)
    response = raise_for_status(await ctx.http.get(ctx.url(ctx.config[PATH_KEY]), params=params, headers={
        "Authorization": f"Bearer {await ctx.access_token()}", "Accept": "application/json"}))
    doc = response.json()
    items = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("id") is not None for i in items):
        raise ProviderError(response.status_code, 'a list page must be {"data": [{"id": ...}, ...], "next_cursor": ...}',
                            code="malformed_list")
    page = [SyncRecord(str(item["id"]), item, parse_time(item.get("updated_at"))) for item in items]
    return window.page(page, doc.get("next_cursor") or None)
