"""A CRM's callback receiver: verifies the hub's ``FulQrun-Signature`` and deduplicates on the event id.

It implements the receiving side independently of ``hub.crm_signing`` (HMAC-SHA256 over
``"<t>.<raw body>"``, constant-time compare, 5-minute window), as a CRM would from the docs.

    with CrmFake(secret) as crm:                  # POST {crm.url}/fulqrun/events
        ...
        crm.events          # accepted events, each once, in arrival order
        crm.deliveries      # every POST, including duplicates and rejected ones
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer

PATH = "/fulqrun/events"
TOLERANCE = 300


class CrmFake(FakeServer):
    """The CRM endpoint the org's ``crm_callback_url`` points at."""

    def __init__(self, secret: str = "") -> None:
        super().__init__(tokens=())
        self.secret = secret
        self.events: list[dict[str, Any]] = []
        self.duplicates = 0
        self.rejected: list[str] = []

    @property
    def callback_url(self) -> str:
        """The URL to configure as the org's CRM callback."""
        return f"{self.url}{PATH}"

    @property
    def deliveries(self) -> list:
        """Every POST received on the callback path."""
        return self.calls(PATH, "POST")

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self.receive_event, methods=["POST"])]

    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    def _check(self, body: bytes, header: str) -> str | None:
        fields = [part.partition("=") for part in header.split(",") if part]
        stamps = [v for k, _, v in fields if k == "t"]
        sigs = [v for k, _, v in fields if k == "v1"]
        if len(stamps) != 1 or not stamps[0].isdigit() or not sigs:
            return "malformed signature header"
        if abs(time.time() - int(stamps[0])) > TOLERANCE:
            return "stale timestamp"
        expected = hmac.new(self.secret.encode(), stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, s) for s in sigs):
            return "bad signature"
        return None

    async def receive_event(self, request: Request) -> Response:
        body = await request.body()
        problem = self._check(body, request.headers.get("fulqrun-signature", ""))
        if problem:
            self.rejected.append(problem)
            return self.error(401, "invalid_signature", problem)
        event = json.loads(body)
        if request.headers.get("fulqrun-event-id") != event["id"]:
            self.rejected.append("event id header mismatch")
            return self.error(400, "bad_request", "FulQrun-Event-Id does not match the body")
        with self._lock:
            if any(e["id"] == event["id"] for e in self.events):
                self.duplicates += 1
            else:
                self.events.append(event)
        return JSONResponse({"received": event["id"]})
