"""DocuSign eSignature actions on docusign-esign (``ApiClient(host=ctx.base_url)``, e.g. …/restapi).

The SDK is synchronous (urllib3), so each call runs in a worker thread (``asyncio.to_thread``); the
event loop is never blocked. The account comes from the connection's ``config.account_id``; a template
is named by id or by a key of ``config.templates`` (e.g. ``{"msa": "<template id>"}``).

``docusign.send_envelope`` puts the opportunity id in the envelope's text custom field
``opportunity_id`` (read back from DocuSign Connect's envelope-completed event to find the
opportunity). DocuSign has no idempotency key, so the envelope also carries a hidden
``hub_request`` field (a hash of ``ctx.idempotency_key``): before creating, the action looks for an
envelope with that marker, so a retried activity returns the first envelope instead of sending twice.

Webhooks (``DocuSignWebhooks``, Connect): ``X-DocuSign-Signature-1..N``, each a base64 HMAC-SHA256 of the body
(any matching any key passes); JSON (SIM) or legacy XML payloads, one event per envelope status (or recipient)
change; completed / sent / declined or voided envelopes map to ``contract.signed`` / ``contract.sent`` /
``contract.declined``, the opportunity from the envelope custom field ``opportunity_id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
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

from connectors import signing
from connectors.base import ActionContext, ProviderError, action
from connectors.events import (
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    WebhookScheme,
    media_type,
    parse_json,
    webhook_scheme,
)

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


# --- webhooks (Connect) -------------------------------------------------------------------------------------

def _docusign_xml(body: bytes) -> ET.Element:
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise MalformedEvent("DocuSign XML with a DTD is refused")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise MalformedEvent(f"body is not valid XML: {exc}") from None
    status = _xml_child(root, "EnvelopeStatus")
    if status is None:
        raise MalformedEvent("legacy DocuSign XML needs an EnvelopeStatus element")
    return status


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_child(node: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in node if _local(c.tag) == name), None)


def _xml_text(node: ET.Element, name: str) -> str | None:
    child = _xml_child(node, name)
    return child.text.strip() if child is not None and child.text else None


def _is_xml(body: bytes, ctype: str) -> bool:
    return "xml" in media_type(ctype) or body.lstrip()[:1] == b"<"


def _docusign_identity(body: bytes, ctype: str) -> tuple[str, str]:
    if _is_xml(body, ctype):
        status = _docusign_xml(body)
        envelope_id = _xml_text(status, "EnvelopeID")
        state = (_xml_text(status, "Status") or "unknown").lower()
        kind = f"envelope-{state}"
    else:
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise MalformedEvent("a DocuSign Connect payload is a JSON object")
        data = doc.get("data") or {}
        envelope_id = data.get("envelopeId")
        kind = str(doc.get("event") or "unknown")
        if data.get("recipientId"):
            return f"{envelope_id}:{kind}:{data['recipientId']}", kind
    if not envelope_id:
        raise MalformedEvent("a DocuSign event needs an envelope id")
    return f"{envelope_id}:{kind}", kind


def _opportunity_field(name: object) -> bool:
    norm = str(name or "").lower().replace("_", "").replace(" ", "").replace("-", "")
    return norm in ("opportunityid", "fulqrunopportunityid")


#: DocuSign envelope events → domain events.
DOCUSIGN_EVENTS = {
    "envelope-completed": "contract.signed",
    "envelope-sent": "contract.sent",
    "envelope-declined": "contract.declined",
    "envelope-voided": "contract.declined",
}


def _map_docusign(event_type: str, body: bytes, ctype: str) -> Mapped:
    kind = DOCUSIGN_EVENTS.get(event_type)
    if kind is None:
        return Mapped(ignored=f"DocuSign {event_type}: only sent, completed, declined and voided envelopes are mapped")
    if _is_xml(body, ctype):
        status = _docusign_xml(body)
        fields_node = _xml_child(status, "CustomFields")
        fields = {
            _xml_text(f, "Name") or "": _xml_text(f, "Value")
            for f in (fields_node if fields_node is not None else [])
        }
        recipients = _xml_child(status, "RecipientStatuses")
        signers = [
            {"email": _xml_text(r, "Email"), "name": _xml_text(r, "UserName")}
            for r in (recipients if recipients is not None else [])
            if _xml_text(r, "Type") == "Signer"
        ]
        reasons = [_xml_text(r, "DeclineReason") for r in (recipients if recipients is not None else [])]
        data = {
            "envelope_id": _xml_text(status, "EnvelopeID"),
            "subject": _xml_text(status, "Subject"),
            "completed_at": _xml_text(status, "Completed"),
            "signers": signers,
            "format": "xml",
            "reason": _xml_text(status, "VoidReason") or next((r for r in reasons if r), None),
        }
    else:
        doc = parse_json(body)
        payload = (doc.get("data") or {}) if isinstance(doc, dict) else {}
        summary = payload.get("envelopeSummary") or {}
        custom = summary.get("customFields") or {}
        fields = {
            str(f.get("name")): f.get("value")
            for kind in ("textCustomFields", "listCustomFields")
            for f in custom.get(kind) or []
            if isinstance(f, dict)
        }
        signers = [
            {"email": s.get("email"), "name": s.get("name")}
            for s in ((summary.get("recipients") or {}).get("signers") or [])
            if isinstance(s, dict)
        ]
        declined = [s.get("declinedReason") for s in ((summary.get("recipients") or {}).get("signers") or [])
                    if isinstance(s, dict)]
        data = {
            "envelope_id": payload.get("envelopeId"),
            "subject": summary.get("emailSubject"),
            "completed_at": summary.get("completedDateTime"),
            "signers": signers,
            "format": "json",
            "reason": summary.get("voidedReason") or next((r for r in declined if r), None),
        }
    opp = next((str(v) for k, v in fields.items() if _opportunity_field(k) and v), None)
    data["custom_fields"] = fields
    data["opportunity_id"] = opp
    data["status"] = event_type.removeprefix("envelope-")
    return Mapped(events=[DomainEvent(type=kind, opportunity_id=opp, data=data)])


@webhook_scheme
class DocuSignWebhooks(WebhookScheme):
    """DocuSign Connect's webhook scheme (see the module docstring)."""

    name = "docusign"
    description = "X-DocuSign-Signature-1..N, base64 HMAC-SHA256 of the body"

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Any ``X-DocuSign-Signature-N`` matching any key."""
        signing.verify_docusign(delivery.body, signing.docusign_signatures(delivery.headers), creds.webhook_secrets)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event: ``{envelope}:{event}`` (``:{recipient}`` for recipient events)."""
        ctype = headers.get("content-type", "")
        event_id, event_type = _docusign_identity(body, ctype)
        return [InboxEvent(event_id, event_type, body, ctype)]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """Envelope completed, sent, declined or voided → ``contract.*``."""
        return _map_docusign(event_type, body, content_type)

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """``X-DocuSign-Signature-1`` with the connection's newest key."""
        return body, {"content-type": content_type,
                      "x-docusign-signature-1": signing.sign_docusign(body, creds.first_secret())}
