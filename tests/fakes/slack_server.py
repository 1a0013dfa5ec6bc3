"""Fake Slack Web API (https://slack.com/api/{method}).

Wire format as Slack's: POST with a JSON or form body, `Authorization: Bearer xoxb-…`; every answer is
HTTP 200 `{"ok": true, ...}` or `{"ok": false, "error": "<code>"}`, except rate limiting: HTTP 429,
`Retry-After: <s>`, `{"ok": false, "error": "ratelimited"}`. Point slack_sdk at it with
`AsyncWebClient(token=..., base_url=fake.url + "/api/")`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token, body_params

TEAM_ID = "T0FULQRUN"
BOT_USER_ID = "U0HUBBOT"
BOT_ID = "B0HUBBOT"


class SlackFake(FakeServer):
    """Slack with a few channels; `messages` holds every posted message."""

    def __init__(self, tokens: tuple[str, ...] = ("xoxb-test-token",)) -> None:
        super().__init__(tokens)
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self._ts = 1_700_000_000
        for name in ("general", "deals", "approvals"):
            self.add_channel(name)

    def add_channel(self, name: str, *, member: bool = True) -> str:
        """Create a channel; returns its id. `member=False`: the bot is not in it (not_in_channel)."""
        channel_id = self.ids.next("C0", 9)
        self.channels[channel_id] = {
            "id": channel_id, "name": name, "is_channel": True, "is_private": False,
            "is_archived": False, "is_member": member, "created": self._ts, "num_members": 3,
        }
        return channel_id

    def channel_id(self, name_or_id: str) -> str | None:
        """Resolve `#name`, `name` or an id the way chat.postMessage does."""
        if name_or_id in self.channels:
            return name_or_id
        name = name_or_id.removeprefix("#")
        return next((c["id"] for c in self.channels.values() if c["name"] == name), None)

    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"ok": False, "error": code}, status_code=status)

    def rate_limit_error(self, retry_after: int) -> Response:
        return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429,
                            headers={"Retry-After": str(retry_after)})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/auth.test", self.auth_test, methods=["POST", "GET"]),
            Route("/api/chat.postMessage", self.post_message, methods=["POST"]),
            Route("/api/chat.update", self.update_message, methods=["POST"]),
            Route("/api/conversations.list", self.conversations_list, methods=["POST", "GET"]),
        ]

    def _auth(self, request: Request) -> Response | None:
        token = bearer_token(request)
        if token is None:
            return self.error(200, "not_authed", "")
        if token not in self.tokens:
            return self.error(200, "invalid_auth", "")
        return None

    async def auth_test(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return JSONResponse({"ok": True, "url": "https://fulqrun.slack.com/", "team": "FulQrun",
                             "user": "hub", "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID})

    async def post_message(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        params = await body_params(request)
        channel_id = self.channel_id(str(params.get("channel", "")))
        if channel_id is None:
            return self.error(200, "channel_not_found", "")
        if not self.channels[channel_id]["is_member"]:
            return self.error(200, "not_in_channel", "")
        if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
            return self.error(200, "no_text", "")
        self._ts += 1
        ts = f"{self._ts}.000100"
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts, "team": TEAM_ID,
                   "text": params.get("text", ""), "channel": channel_id}
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if key in params:
                message[key] = params[key]
        self.messages.append(message)
        public = {k: v for k, v in message.items() if k != "channel"}
        return JSONResponse({"ok": True, "channel": channel_id, "ts": ts, "message": public})

    async def update_message(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        params = await body_params(request)
        for message in self.messages:
            if message["ts"] == params.get("ts") and message["channel"] == self.channel_id(
                    str(params.get("channel", ""))):
                message.update({k: params[k] for k in ("text", "blocks") if k in params})
                return JSONResponse({"ok": True, "channel": message["channel"], "ts": message["ts"],
                                     "text": message["text"]})
        return self.error(200, "message_not_found", "")

    async def conversations_list(self, request: Request) -> Response:
        """Cursor pagination: `limit`, `cursor` → `response_metadata.next_cursor` ('' on the last page)."""
        if (denied := self._auth(request)) is not None:
            return denied
        params = {**dict(request.query_params), **await body_params(request)}
        limit = int(params.get("limit") or 100)
        start = int(params["cursor"].removeprefix("dGVhbTpD")) if params.get("cursor") else 0
        channels = list(self.channels.values())
        page = channels[start:start + limit]
        more = start + limit < len(channels)
        return JSONResponse({"ok": True, "channels": page,
                             "response_metadata": {"next_cursor": f"dGVhbTpD{start + limit}" if more else ""}})
