"""Gong sync model: calls (``POST /v2/calls/extensive``).

What is not standard: Gong answers 404 when no call matches the window (an empty page, not an error),
a call only becomes listable once Gong has processed it — possibly hours after it started, which is the
time the window filters on — so each run re-reads the last ``LATE_CALLS`` (unchanged calls are neither
counted nor announced again), and the change event is the Gong webhook's own shape: ``{"callData":
call}`` with event id ``call:<id>``, exactly what ``connectors.events.split_delivery`` gives a webhook of
the same call, so a call seen by both reaches the inbox once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from connectors.base import ActionContext, ProviderError
from connectors.sync import Page, ProviderEvent, SyncRecord, WindowCursor, iso, parse_time, sync_model

LATE_CALLS = timedelta(hours=3)
CONTENT = {"context": "Extended", "exposedFields": {"parties": True, "content": {"brief": True, "keyPoints": True}}}


def call_events(call: dict[str, Any], previous: dict[str, Any] | None) -> list[ProviderEvent]:
    """A call seen for the first time → the webhook Gong sends for a recorded call."""
    call_id = (call.get("metaData") or {}).get("id")
    if previous is not None or not call_id:
        return []
    return [ProviderEvent(f"call:{call_id}", "call", {"callData": call})]


@sync_model("gong.calls", events=call_events)
async def calls(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Calls started since the window start, with parties, CRM context and the brief (Gong pages by 100)."""
    window = WindowCursor.load(cursor)
    body: dict[str, Any] = {"filter": {}, "contentSelector": CONTENT}
    if window.since is not None:
        body["filter"]["fromDateTime"] = iso(window.since)
    if window.token:
        body["cursor"] = window.token
    response = await ctx.http.post(ctx.url("/v2/calls/extensive"), json=body, headers=await ctx.auth_headers())
    if response.status_code == 404:
        return window.page([], None, LATE_CALLS)
    if response.status_code >= 400:
        raise ProviderError.from_response(response)
    doc = response.json()
    records = [SyncRecord(c["metaData"]["id"], c, parse_time(c["metaData"].get("started")))
               for c in doc.get("calls") or []]
    return window.page(records, (doc.get("records") or {}).get("cursor"), LATE_CALLS)
