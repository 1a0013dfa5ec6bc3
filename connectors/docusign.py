"""DocuSign eSignature actions on docusign-esign (``ApiClient(host=ctx.base_url)``, e.g. …/restapi).

The SDK is synchronous (urllib3), so each call runs in a worker thread (``asyncio.to_thread``); the
event loop is never blocked. The account comes from the connection's ``config.account_id``; a template
is named by id or by a key of ``config.templates`` (e.g. ``{"msa": "<template id>"}``).

``docusign.send_envelope`` puts the opportunity id in the envelope's text custom field
``opportunity_id`` (read back from DocuSign Connect's envelope-completed event to find the
opportunity). DocuSign has no idempotency key, so the envelope also carries a hidden
``hub_request`` field (a hash of ``ctx.idempotency_key``): before creating, the action looks for an
envelope with that marker, so a retried activity returns the first envelope instead of sending twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from docusign_esign import (
    ApiClient,
    ApiException,
    CustomFields,
    EnvelopeDefinition,
    EnvelopesApi,
    TemplateRole,
    TextCustomField,
)
from pydantic import BaseModel, ConfigDict, Field
from urllib3.util.retry import Retry

from connectors.base import ActionContext, ProviderError, action

T = TypeVar("T")
OPPORTUNITY_FIELD = "opportunity_id"
REQUEST_FIELD = "hub_request"
DEDUPE_WINDOW = timedelta(days=7)  # how far back a retried send looks for its first envelope


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SendEnvelope(_Params):
    """Send an envelope from a template to one signer; the opportunity id rides in a custom field."""

    template: str = Field(min_length=1, description="template id, or a key of the connection's config.templates")
    signer: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the signer's email")
    signer_name: str | None = Field(default=None, max_length=100, description="default: the email")
    role: str = Field(default="Signer", min_length=1, description="the template role the signer fills")
    opportunity_id: str = Field(min_length=1, max_length=100)
    email_subject: str | None = Field(default=None, max_length=100)
    status: Literal["sent", "created"] = Field(default="sent", description="'created' keeps it as a draft")


class EnvelopeStatus(_Params):
    """Read an envelope's status, its signers' statuses and its opportunity id."""

    envelope_id: str = Field(min_length=1)


@action("docusign.send_envelope", SendEnvelope,
        output={"envelope_id": str, "status": str, "created": bool, "opportunity_id": str})
async def send_envelope(ctx: ActionContext, params: SendEnvelope) -> dict:
    """Create (and by default send) the envelope, unless this request already did → ``{"envelope_id", ...}``."""
    marker = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:40]
    definition = EnvelopeDefinition(
        template_id=_template_id(ctx, params.template),
        template_roles=[TemplateRole(email=params.signer, name=params.signer_name or params.signer,
                                     role_name=params.role)],
        custom_fields=CustomFields(text_custom_fields=[
            TextCustomField(name=OPPORTUNITY_FIELD, value=params.opportunity_id, show="true", required="false"),
            TextCustomField(name=REQUEST_FIELD, value=marker, show="false", required="false"),
        ]),
        email_subject=params.email_subject,
        status=params.status,
    )
    api, account = _api(ctx, await ctx.access_token()), _account(ctx)
    since = (datetime.now(UTC) - DEDUPE_WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ")

    found = await _run(ctx, lambda: api.list_status_changes(account, from_date=since,
                                                            custom_field=f"{REQUEST_FIELD}={marker}"))
    if found.envelopes:
        envelope = found.envelopes[0]
        out = {"envelope_id": envelope.envelope_id, "status": envelope.status, "created": False}
    else:
        summary = await _run(ctx, lambda: api.create_envelope(account, envelope_definition=definition))
        out = {"envelope_id": summary.envelope_id, "status": summary.status, "created": True}
    return {**out, "opportunity_id": params.opportunity_id}


@action("docusign.envelope_status", EnvelopeStatus, output={
    "envelope_id": str, "status": str, "status_changed_at": str, "sent_at": str, "completed_at": str,
    "opportunity_id": str, "signers": list})
async def envelope_status(ctx: ActionContext, params: EnvelopeStatus) -> dict:
    """GET the envelope with its custom fields and recipients."""
    api, account = _api(ctx, await ctx.access_token()), _account(ctx)
    envelope = await _run(ctx, lambda: api.get_envelope(account, params.envelope_id, include="custom_fields,recipients"))
    fields = (envelope.custom_fields.text_custom_fields or []) if envelope.custom_fields else []
    signers = (envelope.recipients.signers or []) if envelope.recipients else []
    return {
        "envelope_id": envelope.envelope_id,
        "status": envelope.status,
        "status_changed_at": envelope.status_changed_date_time,
        "sent_at": envelope.sent_date_time,
        "completed_at": envelope.completed_date_time,
        "opportunity_id": next((f.value for f in fields if f.name == OPPORTUNITY_FIELD), None),
        "signers": [{"email": s.email, "name": s.name, "role": s.role_name, "status": s.status,
                     "signed_at": s.signed_date_time} for s in signers],
    }


def _api(ctx: ActionContext, token: str) -> EnvelopesApi:
    client = ApiClient(host=ctx.base_url.rstrip("/"))
    ctx.egress.guard_pools(client.rest_client.pool_manager)
    # urllib3 would otherwise sleep out a 429's Retry-After and retry inside the thread: retries are the
    # activity's (Temporal's); connection failures may still be retried here.
    client.rest_client.pool_manager.connection_pool_kw["retries"] = Retry(total=2, respect_retry_after_header=False)
    client.set_default_header("Authorization", f"Bearer {token}")
    return EnvelopesApi(client)


def _account(ctx: ActionContext) -> str:
    account = ctx.config.get("account_id")
    if not account:
        raise ProviderError(400, "the DocuSign connection has no config.account_id", code="missing_config")
    return str(account)


def _template_id(ctx: ActionContext, template: str) -> str:
    return str((ctx.config.get("templates") or {}).get(template, template))


async def _run(ctx: ActionContext, call: Callable[[], T]) -> T:
    """Run one blocking SDK call (one request) in a thread, drawn from the connection's budget; DocuSign's error
    answers become ``ProviderError``."""
    try:
        await ctx.before_request()
        return await asyncio.to_thread(call)
    except ApiException as exc:
        if not exc.status:  # no HTTP answer: a network failure, retried by the activity
            raise
        raise docusign_error(exc) from None


def docusign_error(exc: ApiException) -> ProviderError:
    """``{"errorCode", "message"}`` of a DocuSign error answer as a ``ProviderError``."""
    body: Any = exc.body
    try:
        doc = json.loads(body) if body else {}
    except (ValueError, TypeError):
        doc = {}
    code = doc.get("errorCode") if isinstance(doc, dict) else None
    message = doc.get("message") if isinstance(doc, dict) else None
    text = f"{code}: {message}" if code else f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    return ProviderError(int(exc.status), text, code=code, headers=dict(exc.headers or {}))
