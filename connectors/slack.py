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
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from connectors.base import ActionContext, ProviderError, action

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
