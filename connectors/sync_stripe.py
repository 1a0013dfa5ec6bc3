"""Stripe sync models: customers, invoices and subscriptions.

What is not standard: each run has two phases over two ``WindowCursor``s.

1. *objects*: ``GET /v1/{objects}?created[gte]=<watermark>&starting_after=<id>`` (newest first) — new
   objects since the newest ``created`` seen (the first run reads everything: the backfill).
2. *events*: ``GET /v1/events?type=<object>.*&created[gte]=<watermark>&starting_after=<id>`` — the
   updates, each carrying the object as it was after the event. The event itself travels with the
   record: its id is the ``evt_…`` id a webhook delivers, so ``invoice.paid`` reaches the inbox once
   whether the webhook or the sync saw it first. The backfill's events window starts at the newest
   object it read (Stripe keeps events 30 days).

A list snapshot is the object as it is now (no version time: it always applies); an event's version
time is its ``created``, and events are read newest first, so an older event read after a newer one
does not roll the record back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.base import ActionContext, raise_for_status
from connectors.sync import (
    Page,
    ProviderEvent,
    SyncRecord,
    WindowCursor,
    dump_cursor,
    load_cursor,
    parse_time,
    sync_model,
)

EVENT_TYPES = {"customers": "customer.*", "invoices": "invoice.*", "subscriptions": "customer.subscription.*"}
OBJECT_NAMES = {"customers": "customer", "invoices": "invoice", "subscriptions": "subscription"}


@dataclass
class StripeCursor:
    """Which phase the run is in, and the window of each phase."""

    phase: str = "objects"
    objects: WindowCursor = field(default_factory=WindowCursor)
    events: WindowCursor = field(default_factory=WindowCursor)

    @classmethod
    def load(cls, cursor: str | None) -> StripeCursor:
        doc = load_cursor(cursor)
        return cls(doc.get("phase", "objects"), WindowCursor.load(doc.get("objects")),
                   WindowCursor.load(doc.get("events")))

    def dump(self) -> str:
        return dump_cursor({"phase": self.phase, "objects": self.objects.dump(), "events": self.events.dump()})


async def _list(ctx: ActionContext, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """One list request → the list object."""
    response = raise_for_status(await ctx.http.get(ctx.url(path), params=params, headers=await ctx.auth_headers()))
    return response.json()


def _window_params(window: WindowCursor, page_size: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": min(page_size, 100)}
    if window.since is not None:
        params["created[gte]"] = int(window.since.timestamp())
    if window.token:
        params["starting_after"] = window.token
    return params


async def _fetch(kind: str, ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    cur = StripeCursor.load(cursor)
    if cur.phase == "objects":
        params = _window_params(cur.objects, page_size)
        if kind == "subscriptions":
            params["status"] = "all"  # the default omits canceled subscriptions
        body = await _list(ctx, f"/v1/{kind}", params)
        data = body.get("data") or []
        records = [SyncRecord(o["id"], o) for o in data]
        token = data[-1]["id"] if body.get("has_more") and data else None
        objects, finished = cur.objects.seen(parse_time(o.get("created")) for o in data).following(token)
        # the backfill's events window starts at the newest object (all retained events if there is none)
        events = cur.events if cur.events.since is not None else WindowCursor(since=objects.high)
        return Page(records, StripeCursor("events" if finished else "objects", objects, events).dump(), False)
    params = {**_window_params(cur.events, page_size), "type": EVENT_TYPES[kind]}
    body = await _list(ctx, "/v1/events", params)
    data = [e for e in body.get("data") or [] if ((e.get("data") or {}).get("object") or {}).get("id")]
    wanted = OBJECT_NAMES[kind]
    records = [
        SyncRecord(e["data"]["object"]["id"], e["data"]["object"], parse_time(e.get("created")),
                   ProviderEvent(e["id"], e["type"], e))
        for e in data
        if e["data"]["object"].get("object") == wanted
    ]
    token = body["data"][-1]["id"] if body.get("has_more") and body.get("data") else None
    events, finished = cur.events.seen(parse_time(e.get("created")) for e in data).following(token)
    return Page(records, StripeCursor("objects" if finished else "events", cur.objects, events).dump(), finished)


@sync_model("stripe.customers")
async def customers(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Stripe customers."""
    return await _fetch("customers", ctx, cursor, page_size)


@sync_model("stripe.invoices")
async def invoices(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Stripe invoices (``invoice.paid`` → ``payment.received``)."""
    return await _fetch("invoices", ctx, cursor, page_size)


@sync_model("stripe.subscriptions")
async def subscriptions(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Stripe subscriptions (``customer.subscription.deleted`` → ``subscription.canceled``)."""
    return await _fetch("subscriptions", ctx, cursor, page_size)
