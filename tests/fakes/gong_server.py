"""Fake Gong API v2 (https://api.gong.io/v2/...; tenants may get https://us-NNNN.api.gong.io).

Wire format as Gong's: `Authorization: Basic base64(accessKey:accessKeySecret)` or `Bearer <oauth token>`,
JSON answers carrying a `requestId`, lists paginated by `records.cursor` (absent on the last page),
errors as `{"requestId": "...", "errors": ["..."]}` (404 when a filter matches no call), 429 with
`Retry-After`. Endpoints: `GET /v2/calls` (fromDateTime/toDateTime/cursor), `GET /v2/calls/{id}`,
`POST /v2/calls/extensive` (filter + contentSelector + cursor), `POST /v2/calls/transcript`.
Point httpx at `fake.url`.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token

ACCESS_KEY = "GONGACCESSKEY"
ACCESS_SECRET = "gong-access-secret"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class GongFake(FakeServer):
    """Gong with calls (metadata, parties, content, transcript) in memory; `page_size` per list page."""

    def __init__(self, tokens: tuple[str, ...] = ("gong-oauth-token",), page_size: int = 100) -> None:
        super().__init__(tokens)
        self.basic = {(ACCESS_KEY, ACCESS_SECRET)}
        self.page_size = page_size
        self.calls_by_id: dict[str, dict[str, Any]] = {}
        self.clock = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

    # --- data ----------------------------------------------------------------------------------
    def add_call(self, title: str = "Discovery call", *, brief: str | None = None,
                 key_points: list[str] | None = None, external_email: str = "buyer@customer.example",
                 started: datetime | None = None, opportunity_id: str | None = None) -> dict[str, Any]:
        """Add one recorded call with two parties and a short transcript; returns the stored record."""
        self.clock += timedelta(hours=1)
        start = started or self.clock
        call_id = str(7_000_000_000_000_000_000 + len(self.calls_by_id) + 1)
        meta = {
            "id": call_id, "url": f"https://app.gong.io/call?id={call_id}", "title": title,
            "scheduled": _iso(start), "started": _iso(start), "duration": 1800, "primaryUserId": "234599484848423",
            "direction": "Conference", "system": "Zoom", "scope": "External", "media": "Video",
            "language": "eng", "workspaceId": "623457276584334", "sdrDisposition": None, "clientUniqueId": None,
            "customData": None, "purpose": None, "meetingUrl": "https://zoom.us/j/123", "isPrivate": False,
            "calendarEventId": None,
        }
        parties = [
            {"id": "56825452554556", "emailAddress": "ae@fulqrun.example", "name": "Alex Exec", "title": "AE",
             "userId": "234599484848423", "speakerId": "6432345678555530067", "context": [],
             "affiliation": "Internal", "phoneNumber": None, "methods": ["Invitee"]},
            {"id": "56825452554557", "emailAddress": external_email, "name": "Bo Buyer", "title": "CFO",
             "userId": None, "speakerId": "6432345678555530068", "context": [],
             "affiliation": "External", "phoneNumber": None, "methods": ["Invitee"]},
        ]
        content = {
            "brief": brief or f"{title}: the buyer confirmed budget and asked for a proposal.",
            "keyPoints": [{"text": t} for t in (key_points or ["Budget confirmed", "Decision in Q2"])],
            "topics": [{"name": "Pricing", "duration": 420}, {"name": "Next Steps", "duration": 180}],
            "highlights": [{"title": "Next steps", "items": [{"text": "Send proposal by Friday",
                                                               "startTimes": [1500]}]}],
            "callOutcome": {"id": "1", "category": "Answered", "name": "Meeting booked"},
            "pointsOfInterest": {"actionItems": [{"snippetStartTime": 1500, "snippetEndTime": 1520,
                                                  "speakerID": "6432345678555530067",
                                                  "snippet": "I'll send the proposal by Friday."}]},
            "trackers": [{"id": "1", "name": "Competitors", "count": 1, "type": "KEYWORD", "occurrences": []}],
        }
        transcript = [
            {"speakerId": "6432345678555530067", "topic": "Pricing",
             "sentences": [{"start": 1000, "end": 4000, "text": "Thanks for joining today."},
                           {"start": 4100, "end": 8000, "text": "Let's talk about pricing."}]},
            {"speakerId": "6432345678555530068", "topic": "Pricing",
             "sentences": [{"start": 8200, "end": 12000, "text": "We have budget approved for this quarter."}]},
        ]
        context = [{"system": "Salesforce", "objects": [
            {"objectType": "Opportunity", "objectId": opportunity_id, "fields": []}]}] if opportunity_id else []
        record = {"metaData": meta, "context": context, "parties": parties, "content": content,
                  "transcript": transcript}
        self.calls_by_id[call_id] = record
        return record

    def seed_calls(self, n: int) -> list[dict[str, Any]]:
        """Add `n` calls, one hour apart."""
        return [self.add_call(f"Call {i}") for i in range(n)]

    # --- wire ----------------------------------------------------------------------------------
    def _rid(self) -> str:
        return secrets.token_hex(10)

    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"requestId": self._rid(), "errors": [message]}, status_code=status)

    def rate_limit_error(self, retry_after: int) -> Response:
        return JSONResponse({"requestId": self._rid(), "errors": ["Too many requests"]}, status_code=429,
                            headers={"Retry-After": str(retry_after)})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/calls", self.list_calls, methods=["GET"]),
            Route("/v2/calls/extensive", self.calls_extensive, methods=["POST"]),
            Route("/v2/calls/transcript", self.transcripts, methods=["POST"]),
            Route("/v2/calls/{id}", self.get_call, methods=["GET"]),
        ]

    def _auth(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                key = secret = ""
            if (key, secret) in self.basic:
                return None
        elif bearer_token(request) in self.tokens:
            return None
        return self.error(401, "unauthorized", "Unauthorized")

    def _select(self, flt: dict[str, Any]) -> list[dict[str, Any]]:
        calls = sorted(self.calls_by_id.values(), key=lambda c: c["metaData"]["started"])
        if flt.get("callIds"):
            wanted = set(flt["callIds"])
            calls = [c for c in calls if c["metaData"]["id"] in wanted]
        if flt.get("fromDateTime"):
            since = _parse(flt["fromDateTime"])
            calls = [c for c in calls if _parse(c["metaData"]["started"]) >= since]
        if flt.get("toDateTime"):
            until = _parse(flt["toDateTime"])
            calls = [c for c in calls if _parse(c["metaData"]["started"]) < until]
        return calls

    def _page(self, items: list[Any], cursor: str | None) -> tuple[list[Any], dict[str, Any]]:
        start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        page = items[start:start + self.page_size]
        records: dict[str, Any] = {"totalRecords": len(items), "currentPageSize": len(page),
                                   "currentPageNumber": start // self.page_size}
        if start + self.page_size < len(items):
            records["cursor"] = base64.urlsafe_b64encode(str(start + self.page_size).encode()).decode()
        return page, records

    async def list_calls(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        q = request.query_params
        calls = self._select({"fromDateTime": q.get("fromDateTime"), "toDateTime": q.get("toDateTime")})
        if not calls:
            return self.error(404, "not_found", "No calls found corresponding to the provided filters")
        page, records = self._page(calls, q.get("cursor"))
        return JSONResponse({"requestId": self._rid(), "records": records,
                             "calls": [c["metaData"] for c in page]})

    async def get_call(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        record = self.calls_by_id.get(request.path_params["id"])
        if record is None:
            return self.error(404, "not_found", "No call found corresponding to the provided call id")
        return JSONResponse({"requestId": self._rid(), "call": record["metaData"]})

    async def calls_extensive(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await request.json()
        calls = self._select(body.get("filter") or {})
        if not calls:
            return self.error(404, "not_found", "No calls found corresponding to the provided filters")
        page, records = self._page(calls, body.get("cursor"))
        exposed = (body.get("contentSelector") or {}).get("exposedFields") or {}
        wanted_content = {k for k, v in (exposed.get("content") or {}).items() if v}
        out = []
        for call in page:
            item: dict[str, Any] = {"metaData": call["metaData"]}
            if (body.get("contentSelector") or {}).get("context") == "Extended":
                item["context"] = call["context"]
            if exposed.get("parties"):
                item["parties"] = call["parties"]
            if wanted_content:
                item["content"] = {k: v for k, v in call["content"].items() if k in wanted_content}
            out.append(item)
        return JSONResponse({"requestId": self._rid(), "records": records, "calls": out})

    async def transcripts(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await request.json()
        calls = self._select(body.get("filter") or {})
        if not calls:
            return self.error(404, "not_found", "No calls found corresponding to the provided filters")
        page, records = self._page(calls, body.get("cursor"))
        return JSONResponse({"requestId": self._rid(), "records": records,
                             "callTranscripts": [{"callId": c["metaData"]["id"], "transcript": c["transcript"]}
                                                 for c in page]})
