"""DocuSign sync model: envelopes (``GET /v2.1/accounts/{account}/envelopes?from_date=…``).

What is not standard: the account comes from ``config.account_id``; envelopes are listed oldest change
first, so the window moves by keyset (``WindowCursor.keyset_page``) on ``lastModifiedDateTime``; an
envelope whose status became ``completed`` raises the DocuSign Connect ``envelope-completed`` event
(JSON, with the envelope as ``envelopeSummary``) under the event id Connect's webhook gets,
``<envelopeId>:envelope-completed``.
"""

from __future__ import annotations

from typing import Any

from connectors.base import ActionContext, ProviderError, raise_for_status
from connectors.sync import Page, ProviderEvent, SyncRecord, WindowCursor, iso, parse_time, sync_model

EPOCH = "2000-01-01T00:00:00Z"  # DocuSign requires a from_date: the backfill starts here


def envelope_events(envelope: dict[str, Any], previous: dict[str, Any] | None) -> list[ProviderEvent]:
    """An envelope that became completed → Connect's ``envelope-completed`` event."""
    if envelope.get("status") != "completed" or (previous or {}).get("status") == "completed":
        return []
    envelope_id = envelope["envelopeId"]
    body = {
        "event": "envelope-completed", "apiVersion": "v2.1", "uri": envelope.get("envelopeUri"),
        "retryCount": 0, "generatedDateTime": envelope.get("statusChangedDateTime"),
        "data": {"envelopeId": envelope_id, "envelopeSummary": envelope},
    }
    return [ProviderEvent(f"{envelope_id}:envelope-completed", "envelope-completed", body)]


def _changed(envelope: dict[str, Any]):  # noqa: ANN202
    return parse_time(envelope.get("lastModifiedDateTime") or envelope.get("statusChangedDateTime"))


@sync_model("docusign.envelopes", events=envelope_events)
async def envelopes(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
    """Envelopes changed since the window start, with custom fields (the opportunity) and recipients."""
    account = ctx.config.get("account_id")
    if not account:
        raise ProviderError(400, "the DocuSign connection has no config.account_id", code="missing_config")
    window = WindowCursor.load(cursor)
    params = {"from_date": iso(window.since) if window.since else EPOCH, "count": str(page_size),
              "start_position": window.token or "0", "include": "custom_fields,recipients",
              "order_by": "last_modified", "order": "asc"}
    response = raise_for_status(await ctx.http.get(ctx.url(f"/v2.1/accounts/{account}/envelopes"), params=params,
                                                   headers=await ctx.auth_headers()))
    listed = response.json().get("envelopes") or []
    records = [SyncRecord(e["envelopeId"], e, _changed(e)) for e in listed]
    return window.keyset_page(records, len(listed) >= page_size, page_size)
