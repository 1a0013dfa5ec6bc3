"""Slack actions on slack_sdk's ``AsyncWebClient`` (``base_url`` = the connection's base URL + "/").

Approval buttons: ``slack.post_approval`` posts a message with an Approve and a Reject button. Each
button's ``action_id`` is ``fulqrun.approval.approve`` / ``fulqrun.approval.reject`` (unique in the
message, as Slack requires) and its ``value`` is compact JSON (≤ 2,000 characters, Slack's limit)::

    {"opportunity_id": "opp_123", "request": "discount-30", "decision": "approve"}

``request`` names what is being approved (the workflow's approval request id). A click comes back as
a Slack interactivity delivery (``block_actions``), mapped by connectors/events.py to a ``slack.action``
domain event whose ``approval`` carries the decision, the request and the Slack user.

Slack answers errors as HTTP 200 ``{"ok": false, "error": "<code>"}``; they are raised as
``ProviderError`` with an HTTP-like status: auth codes → 401 (the activity fetches a fresh token and
re-runs once), ``ratelimited`` → 429 with Slack's ``Retry-After``, Slack-side failures → 503, the rest 400.

Webhooks (``SlackWebhooks``): ``X-Slack-Signature`` v0 HMAC-SHA256 over ``v0:<timestamp>:<body>`` within 5
minutes; Events API JSON, interactivity (``payload=<json>``) and slash commands (forms), each one event
(``event_id``, else ``trigger_id``, else a content hash) stored without Slack's verification ``token``; the
(verified) ``url_verification`` handshake answered with its challenge; acknowledged with an empty 200 (a JSON
body means something to Slack). Buttons (``block_actions``) map to ``slack.action`` domain events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from connectors import signing
from connectors.base import ActionContext, ProviderError, action
from connectors.events import (
    REDACTED,
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    Reply,
    WebhookScheme,
    digest,
    dump,
    media_type,
    parse_json,
    webhook_scheme,
)

APPROVAL_ACTION_PREFIX = "fulqrun.approval."
APPROVAL_BLOCK_ID = "fulqrun_approval"
AUTH_ERRORS = {"not_authed", "invalid_auth", "token_expired", "token_revoked", "account_inactive"}
SERVER_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostMessage(_Params):
    """Post a message to a channel (``#name`` or id); ``blocks`` are Block Kit blocks, ``text`` the fallback."""

    channel: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=40_000)
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    unfurl_links: bool = False


class PostApproval(_Params):
    """Ask for an approval: a message with Approve/Reject buttons whose clicks come back as ``slack.action``."""

    channel: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=3000, description="the question, Slack mrkdwn")
    opportunity_id: str | None = Field(default=None, min_length=1, max_length=500,
                                       description="the opportunity the click is about (None: the org)")
    request: str = Field(min_length=1, max_length=500, description="id of the approval request")
    fields: dict[str, str] = Field(default_factory=dict, description="label → value shown under the question")
    approve_label: str = Field(default="Approve", min_length=1, max_length=75)
    reject_label: str = Field(default="Reject", min_length=1, max_length=75)


def approval_value(opportunity_id: str | None, request: str, decision: Literal["approve", "reject"]) -> str:
    """The ``value`` of an approval button (see the module docstring for the format)."""
    return json.dumps({"opportunity_id": opportunity_id, "request": request, "decision": decision},
                      separators=(",", ":"))


def approval_blocks(params: PostApproval) -> list[dict[str, Any]]:
    """Block Kit for an approval request: the question, optional fields, the two buttons."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": params.text}}]
    if params.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in list(params.fields.items())[:10]]})
    buttons = []
    for decision, label, style in (("approve", params.approve_label, "primary"),
                                   ("reject", params.reject_label, "danger")):
        buttons.append({
            "type": "button", "action_id": APPROVAL_ACTION_PREFIX + decision, "style": style,
            "text": {"type": "plain_text", "text": label},
            "value": approval_value(params.opportunity_id, params.request, decision),
        })
    blocks.append({"type": "actions", "block_id": APPROVAL_BLOCK_ID, "elements": buttons})
    return blocks


@action("slack.post_message", PostMessage, output={"channel": str, "ts": str})
async def post_message(ctx: ActionContext, params: PostMessage) -> dict:
    """chat.postMessage → ``{"channel", "ts"}``."""
    response = await _post(ctx, params.model_dump(exclude_none=True))
    return {"channel": response["channel"], "ts": response["ts"]}


@action("slack.post_approval", PostApproval, output={"channel": str, "ts": str, "request": str})
async def post_approval(ctx: ActionContext, params: PostApproval) -> dict:
    """chat.postMessage with approval buttons → ``{"channel", "ts", "request"}``."""
    response = await _post(ctx, {"channel": params.channel, "text": params.text, "blocks": approval_blocks(params)})
    return {"channel": response["channel"], "ts": response["ts"], "request": params.request}


async def _post(ctx: ActionContext, message: dict[str, Any]) -> AsyncSlackResponse:
    async with ctx.egress.aiohttp_session() as session:
        client = AsyncWebClient(token=await ctx.access_token(), base_url=ctx.base_url.rstrip("/") + "/",
                                session=session,  # the egress policy's
                                retry_handlers=[])  # retries belong to the activity (Temporal), not the SDK
        try:
            await ctx.before_request()
            return await client.chat_postMessage(**message)
        except SlackApiError as exc:
            raise slack_error(exc.response) from None


def slack_error(response: AsyncSlackResponse) -> ProviderError:
    """A Slack failure (HTTP 200 ``ok: false`` or an HTTP error) as a ``ProviderError``."""
    data = response.data if isinstance(response.data, dict) else {}
    code = str(data.get("error") or f"http_{response.status_code}")
    if response.status_code == 429 or code == "ratelimited":
        status = 429
    elif code in AUTH_ERRORS:
        status = 401
    elif code in SERVER_ERRORS or response.status_code >= 500:
        status = 503
    else:
        status = response.status_code if response.status_code >= 400 else 400
    details = (data.get("response_metadata") or {}).get("messages") or []
    message = code + (f" ({'; '.join(details)})" if details else "")
    return ProviderError(status, message, code=code, headers=dict(response.headers))


# --- webhooks -----------------------------------------------------------------------------------------------

#: Events API request types, sent as JSON; everything else (interactivity) arrives as a ``payload=`` form.
SLACK_EVENTS_API = ("event_callback", "url_verification", "app_rate_limited")


def slack_payload(body: bytes, content_type: str) -> dict:
    """The JSON document of a Slack request: Events API JSON, an interactivity ``payload=``, or a slash command."""
    if media_type(content_type) == "application/x-www-form-urlencoded":
        try:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise MalformedEvent("form body is not UTF-8") from None
        if "payload" in form:
            doc = parse_json(form["payload"].encode())
        else:
            doc = {**form, "type": "slash_command"} if "command" in form else form
    else:
        doc = parse_json(body)
    if not isinstance(doc, dict):
        raise MalformedEvent("a Slack payload is a JSON object")
    return doc


def _split_slack(body: bytes, ctype: str) -> InboxEvent:
    doc = slack_payload(body, ctype)
    kind = str(doc.get("type") or "unknown")
    if kind == "event_callback":
        event = doc.get("event") or {}
        kind = f"event_callback.{event.get('type', 'unknown')}"
        event_id = doc.get("event_id")
    else:
        event_id = doc.get("trigger_id")
    stored = _redact_slack(body, ctype)
    return InboxEvent(str(event_id) if event_id else f"{kind}:{digest(body)}", kind, stored, ctype)


def _redact_slack(body: bytes, ctype: str) -> bytes:
    """Drop Slack's (deprecated but secret) verification ``token`` from what is stored."""
    if media_type(ctype) == "application/x-www-form-urlencoded":
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
        out = []
        for k, v in pairs:
            if k == "token":
                v = REDACTED
            elif k == "payload":
                doc = json.loads(v)
                if isinstance(doc, dict) and "token" in doc:
                    doc["token"] = REDACTED
                v = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
            out.append((k, v))
        return urlencode(out).encode()
    doc = json.loads(body)
    if isinstance(doc, dict) and "token" in doc:
        doc["token"] = REDACTED
        return dump(doc)
    return body


def _button_value(raw: object) -> dict:
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


APPROVAL_DECISIONS = {"approve": "approved", "approved": "approved", "reject": "rejected", "rejected": "rejected"}


def _map_slack(event_type: str, doc: dict) -> Mapped:
    if event_type != "block_actions":
        return Mapped(ignored=f"Slack {event_type} has no domain event (only buttons, block_actions, are mapped)")
    actions = [a for a in doc.get("actions") or [] if isinstance(a, dict)]
    if not actions:
        return Mapped(ignored="Slack block_actions without an action")
    user = doc.get("user") or {}
    container = doc.get("container") or {}
    events = []
    for pressed in actions:
        value = _button_value(pressed.get("value"))
        opp = str(value["opportunity_id"]) if value.get("opportunity_id") else None
        decision = APPROVAL_DECISIONS.get(str(value.get("decision") or pressed.get("action_id") or "").lower())
        data = {
            "action_id": pressed.get("action_id"),
            "block_id": pressed.get("block_id"),
            "value": pressed.get("value"),
            "user": {"id": user.get("id"), "name": user.get("username") or user.get("name")},
            "channel_id": (doc.get("channel") or {}).get("id") or container.get("channel_id"),
            "message_ts": container.get("message_ts"),
            "opportunity_id": opp,
        }
        if decision:
            data["approval"] = {"decision": decision, "request": value.get("request"), "by": user.get("id")}
        events.append(DomainEvent(type="slack.action", opportunity_id=opp, data=data))
    return Mapped(events=events)


@webhook_scheme
class SlackWebhooks(WebhookScheme):
    """Slack's webhook scheme (see the module docstring)."""

    name = "slack"
    description = "X-Slack-Signature v0 HMAC-SHA256 with X-Slack-Request-Timestamp, 5-minute window"
    ack_counts = False

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Check ``X-Slack-Signature`` and its timestamp."""
        h = delivery.headers
        signing.verify_slack(delivery.body, h.get("x-slack-request-timestamp"), h.get("x-slack-signature"),
                             creds.webhook_secrets, now=now)

    def handshake(self, body: bytes, headers: Mapping[str, str]) -> Reply | None:
        """The challenge of a ``url_verification`` request, echoed as ``{"challenge": ...}``."""
        if b"url_verification" not in body:
            return None
        try:
            doc = slack_payload(body, headers.get("content-type", ""))
        except MalformedEvent:
            return None
        challenge = doc.get("challenge") if doc.get("type") == "url_verification" else None
        return None if challenge is None else Reply({"challenge": str(challenge)})

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event per request, without the verification token."""
        return [_split_slack(body, headers.get("content-type", ""))]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """Buttons (``block_actions``) → ``slack.action``."""
        return _map_slack(event_type, slack_payload(body, content_type))

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """v0 signature; a JSON interactivity payload is sent the way Slack sends it (form ``payload=``)."""
        secret = creds.first_secret()
        if content_type == "application/json":
            doc = json.loads(body)
            if doc.get("type") not in SLACK_EVENTS_API:
                body = urlencode({"payload": json.dumps(doc)}).encode()
                content_type = "application/x-www-form-urlencoded"
        return body, {"content-type": content_type, "x-slack-request-timestamp": str(now),
                      "x-slack-signature": signing.sign_slack(body, secret, now)}

    def new_id(self, doc: dict, fresh: str) -> None:
        """A fresh ``event_id`` (Events API callbacks only)."""
        if "event_id" not in doc:
            super().new_id(doc, fresh)
        doc["event_id"] = f"Ev{fresh.upper()}"
