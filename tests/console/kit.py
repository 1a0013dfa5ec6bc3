"""Shared setup of the console tests: sign in through the form, read a page's CSRF token, a dead event."""

from __future__ import annotations

import re

import httpx

from hub.runtime import Hub
from hub.store.inbox import WebhookEvent

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found[1]


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """Sign in with an API key through the form; returns the session's CSRF token."""
    form = await http.get("/console/signin")
    r = await http.post("/console/signin", data={"api_key": key, "csrf": csrf_of(form.text), "next": "/console/inbox"})
    assert r.status_code == 303 and r.headers["location"] == "/console/inbox", r.text
    return csrf_of((await http.get("/console/inbox")).text)


async def dead_event(hub: Hub, org: str = "acme", event_type: str = "invoice.paid",
                     body: bytes = b'{"id": "evt_1", "type": "invoice.paid"}') -> str:
    """A Stripe webhook event that exhausted its attempts (dead-lettered); returns its inbox id."""
    async with hub.db.session() as session:
        row = WebhookEvent(
            org_id=org, connection_id="c-stripe", provider="stripe", event_id=f"evt_{event_type}",
            event_type=event_type, status="dead", attempts=5, last_error="connection refused (stripe)",
            errors=[{"attempt": 5, "error": "connection refused (stripe)"}], headers={"content-type": "application/json"},
            body=body, content_type="application/json",
        )  # fmt: skip
        session.add(row)
        await session.flush()
        return row.id
