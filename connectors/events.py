"""Provider webhook deliveries → inbox events → domain events. Pure: no I/O, no clock.

Two steps, both on the raw (already verified) bytes:

* ``split_delivery`` names what one HTTP delivery contains: one or more events, each with the
  provider's event id (the dedupe key), its type and the bytes to keep in the inbox (secrets such
  as Slack's verification token or Graph's ``clientState`` removed).
* ``map_event`` turns one stored event into domain events, or says why it is ignored.

Domain event mapping (the first column is the provider's signing scheme / event format):

| provider | event | domain event | opportunity from |
|---|---|---|---|
| stripe | ``invoice.paid`` | ``payment.received`` | ``metadata.opportunity_id`` (invoice, then subscription details) |
| stripe | ``invoice.payment_failed`` | ``payment.failed`` | same |
| stripe | ``customer.subscription.deleted`` | ``subscription.canceled`` | subscription ``metadata.opportunity_id`` |
| docusign | envelope completed (JSON ``envelope-completed`` or legacy XML ``Status=Completed``) | ``contract.signed`` | envelope custom field ``opportunity_id`` |
| docusign | envelope sent | ``contract.sent`` | same |
| docusign | envelope declined or voided (``data.status``, ``data.reason``) | ``contract.declined`` | same |
| gong | a call (``callData.metaData.id``) | ``call.recorded`` | the CRM context object of type ``Opportunity`` |
| slack | ``block_actions`` (a button) | ``slack.action`` (+ ``approval`` when it is an approve/reject button) | the button value's ``opportunity_id`` |
| microsoft | change notification on a driveItem or a SharePoint list | ``document.changed`` | — (the item's folder, ``Opportunities/{id}/…``, found by the event's processing) |
| microsoft | lifecycle notification | ``graph.lifecycle`` | — |
| generic | any event with a ``type`` | that type, verbatim | ``data.opportunity_id`` |

Everything else is ignored with a stated reason (``Mapped.ignored``).

A Graph ``document.changed`` says which drive item changed when the notification names one
(``drives/{drive}/items/{item}``, as the SharePoint documents sync writes them: ``item_id``, ``drive_id``), or
that something under a drive's root changed (``drive_root``: what Graph's own driveItem notifications say;
the item is found by a delta query). What the hub then does (locate the item, renew a subscription, run the
sync) is decided by the relay and done by ``WebhookEventWorkflow``.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import orjson
from pydantic import BaseModel, Field

from rules import limits

REDACTED = "[redacted]"


class MalformedEvent(ValueError):
    """A verified delivery whose content cannot be read (bad JSON/XML/form, no event id)."""


class EventTooLarge(MalformedEvent):
    """A body nested, listing or holding strings beyond the input limits; refused before any signature check."""


class DomainEvent(BaseModel):
    """What happened, in the hub's words: ``type`` (e.g. ``payment.received``), its data and opportunity."""

    type: str
    opportunity_id: str | None = None
    data: dict = Field(default_factory=dict)


@dataclass(frozen=True)
class InboxEvent:
    """One event of a delivery: the provider's event id, its type and the bytes to store."""

    event_id: str
    type: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Mapped:
    """The domain events of one inbox event, or the reason it maps to none."""

    events: list[DomainEvent] = field(default_factory=list)
    ignored: str | None = None


def trigger_names(provider: str, event_type: str, mapping: Mapped) -> set[str]:
    """The names a rule's ``on`` may use for this event: ``provider.type`` and each domain type."""
    return {f"{provider}.{event_type}", *(e.type for e in mapping.events)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:40]


def _json(body: bytes) -> object:
    """The parsed body, within the input limits (``rules.limits``) that bound what rules cost."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # integers beyond 64 bits or NaN: valid for the json module, which
        try:  # also words the error
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEvent(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise EventTooLarge(f"body nested deeper than {limits.MAX_DEPTH} levels") from None
    if limits.within_by_size(body):  # most deliveries: no need to walk the document
        return doc
    try:
        limits.check(doc)
    except limits.LimitExceeded as exc:
        raise EventTooLarge(f"body beyond the input limits: {exc}") from None
    return doc


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --- split: one delivery → inbox events ------------------------------------------------------------------


def split_delivery(scheme: str, body: bytes, headers: MappingABC[str, str]) -> list[InboxEvent]:
    """The events in one verified delivery in ``scheme``'s format (``headers`` with lower-case keys)."""
    ctype = headers.get("content-type", "")
    if scheme == "stripe":
        doc = _json(body)
        if not isinstance(doc, dict) or not doc.get("id") or not doc.get("type"):
            raise MalformedEvent("a Stripe event needs 'id' and 'type'")
        return [InboxEvent(str(doc["id"]), str(doc["type"]), body, ctype)]
    if scheme == "slack":
        return [_split_slack(body, ctype)]
    if scheme == "docusign":
        event_id, event_type = _docusign_identity(body, ctype)
        return [InboxEvent(event_id, event_type, body, ctype)]
    if scheme == "gong":
        doc = _json(body)
        if not isinstance(doc, dict):
            raise MalformedEvent("a Gong payload is a JSON object")
        call_id = ((doc.get("callData") or {}).get("metaData") or {}).get("id")
        if doc.get("isTest") or not call_id:
            return [InboxEvent(f"test:{_digest(body)}", "test", body, ctype)]
        return [InboxEvent(f"call:{call_id}", "call", body, ctype)]
    if scheme == "microsoft":
        return [_graph_event(n, ctype) for n in graph_notifications(body)]
    if scheme == "hubspot":
        doc = _json(body)
        items = doc if isinstance(doc, list) else [doc]
        out = []
        for item in items:
            if not isinstance(item, dict) or "eventId" not in item:
                raise MalformedEvent("a HubSpot event needs 'eventId'")
            out.append(InboxEvent(str(item["eventId"]), str(item.get("subscriptionType", "event")), _dump(item), ctype))
        return out
    if scheme == "generic":
        doc = _json(body)
        event_id = headers.get("webhook-id") or (doc.get("id") if isinstance(doc, dict) else None)
        if not event_id:
            raise MalformedEvent("a generic event needs a webhook-id header or an 'id' field")
        event_type = doc.get("type") if isinstance(doc, dict) else None
        return [InboxEvent(str(event_id), str(event_type or "event"), body, ctype)]
    raise MalformedEvent(f"no event format known for scheme {scheme!r}")


def slack_payload(body: bytes, content_type: str) -> dict:
    """The JSON document of a Slack request: Events API JSON, an interactivity ``payload=``, or a slash command."""
    if _media(content_type) == "application/x-www-form-urlencoded":
        try:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise MalformedEvent("form body is not UTF-8") from None
        if "payload" in form:
            doc = _json(form["payload"].encode())
        else:
            doc = {**form, "type": "slash_command"} if "command" in form else form
    else:
        doc = _json(body)
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
    return InboxEvent(str(event_id) if event_id else f"{kind}:{_digest(body)}", kind, stored, ctype)


def _redact_slack(body: bytes, ctype: str) -> bytes:
    """Drop Slack's (deprecated but secret) verification ``token`` from what is stored."""
    if _media(ctype) == "application/x-www-form-urlencoded":
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
        return _dump(doc)
    return body


def graph_notifications(body: bytes) -> list[dict]:
    """The notifications of a Microsoft Graph / SharePoint change-notification collection."""
    doc = _json(body)
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, list) or not all(isinstance(n, dict) for n in value):
        raise MalformedEvent("a Graph notification collection has a 'value' list of objects")
    return value


def _graph_event(note: dict, ctype: str) -> InboxEvent:
    stored = {k: (REDACTED if k == "clientState" else v) for k, v in note.items()}
    if note.get("lifecycleEvent"):
        kind = f"lifecycle.{note['lifecycleEvent']}"
    else:
        kind = f"change.{note.get('changeType') or 'updated'}"
    raw = _dump({"value": [stored]})
    event_id = note.get("id") or f"{note.get('subscriptionId', '')}:{_digest(raw)}"
    return InboxEvent(str(event_id), kind, raw, ctype or "application/json")


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
    return "xml" in _media(ctype) or body.lstrip()[:1] == b"<"


def _docusign_identity(body: bytes, ctype: str) -> tuple[str, str]:
    if _is_xml(body, ctype):
        status = _docusign_xml(body)
        envelope_id = _xml_text(status, "EnvelopeID")
        state = (_xml_text(status, "Status") or "unknown").lower()
        kind = f"envelope-{state}"
    else:
        doc = _json(body)
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


# --- map: one inbox event → domain events ------------------------------------------------------------------


def map_event(scheme: str, event_type: str, body: bytes, content_type: str) -> Mapped:
    """The domain events of one stored event in ``scheme``'s format, or ``Mapped(ignored=reason)``."""
    if scheme == "stripe":
        return _map_stripe(event_type, _json(body))
    if scheme == "slack":
        return _map_slack(event_type, slack_payload(body, content_type))
    if scheme == "docusign":
        return _map_docusign(event_type, body, content_type)
    if scheme == "gong":
        return _map_gong(event_type, _json(body))
    if scheme == "microsoft":
        return _map_graph(graph_notifications(body)[0])
    if scheme == "generic":
        return _map_generic(_json(body))
    return Mapped(ignored=f"{scheme} events are recorded but not mapped to domain events")


STRIPE_DOMAIN = {
    "invoice.paid": "payment.received",
    "invoice.payment_failed": "payment.failed",
    "customer.subscription.deleted": "subscription.canceled",
}
STRIPE_IGNORED = {
    "invoice.payment_succeeded": "same payment as invoice.paid, which is the one mapped",
}


def _opportunity_from_metadata(*metas: object) -> str | None:
    for meta in metas:
        if isinstance(meta, dict) and meta.get("opportunity_id"):
            return str(meta["opportunity_id"])
    return None


def _map_stripe(event_type: str, doc: object) -> Mapped:
    domain = STRIPE_DOMAIN.get(event_type)
    if domain is None:
        reason = STRIPE_IGNORED.get(event_type, f"Stripe {event_type} has no domain event")
        return Mapped(ignored=reason)
    obj = ((doc or {}).get("data") or {}).get("object") or {} if isinstance(doc, dict) else {}
    details = obj.get("subscription_details") or {}
    opp = _opportunity_from_metadata(obj.get("metadata"), details.get("metadata"))
    if obj.get("object") == "subscription":
        items = ((obj.get("items") or {}).get("data")) or []
        data = {
            "subscription_id": obj.get("id"),
            "customer_id": obj.get("customer"),
            "status": obj.get("status"),
            "canceled_at": obj.get("canceled_at"),
            "ended_at": obj.get("ended_at"),
            "price_ids": [((i.get("price") or {}).get("id")) for i in items if isinstance(i, dict)],
        }
    else:
        data = {
            "invoice_id": obj.get("id"),
            "invoice_number": obj.get("number"),
            "customer_id": obj.get("customer"),
            "subscription_id": obj.get("subscription"),
            "amount_paid": obj.get("amount_paid"),
            "amount_due": obj.get("amount_due"),
            "currency": obj.get("currency"),
            "status": obj.get("status"),
            "attempt_count": obj.get("attempt_count"),
            "hosted_invoice_url": obj.get("hosted_invoice_url"),
        }
    data["opportunity_id"] = opp
    return Mapped(events=[DomainEvent(type=domain, opportunity_id=opp, data=data)])


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
    for action in actions:
        value = _button_value(action.get("value"))
        opp = str(value["opportunity_id"]) if value.get("opportunity_id") else None
        decision = APPROVAL_DECISIONS.get(str(value.get("decision") or action.get("action_id") or "").lower())
        data = {
            "action_id": action.get("action_id"),
            "block_id": action.get("block_id"),
            "value": action.get("value"),
            "user": {"id": user.get("id"), "name": user.get("username") or user.get("name")},
            "channel_id": (doc.get("channel") or {}).get("id") or container.get("channel_id"),
            "message_ts": container.get("message_ts"),
            "opportunity_id": opp,
        }
        if decision:
            data["approval"] = {"decision": decision, "request": value.get("request"), "by": user.get("id")}
        events.append(DomainEvent(type="slack.action", opportunity_id=opp, data=data))
    return Mapped(events=events)


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
        doc = _json(body)
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


def _map_gong(event_type: str, doc: object) -> Mapped:
    if event_type != "call" or not isinstance(doc, dict):
        return Mapped(ignored="Gong 'Test now' delivery (isTest) carries no call")
    call = doc.get("callData") or {}
    meta = call.get("metaData") or {}
    opp = account = crm = None
    for ctx in call.get("context") or []:
        for obj in (ctx or {}).get("objects") or []:
            kind = (obj or {}).get("objectType")
            if kind == "Opportunity" and opp is None:
                opp, crm = str(obj.get("objectId")), ctx.get("system")
            elif kind == "Account" and account is None:
                account = str(obj.get("objectId"))
    data = {
        "call_id": meta.get("id"),
        "title": meta.get("title"),
        "url": meta.get("url"),
        "started": meta.get("started"),
        "duration_s": meta.get("duration"),
        "direction": meta.get("direction"),
        "scope": meta.get("scope"),
        "crm_system": crm,
        "account_id": account,
        "participants": [
            {"name": p.get("name"), "email": p.get("emailAddress"), "title": p.get("title")}
            for p in call.get("parties") or []
            if isinstance(p, dict)
        ],
        "opportunity_id": opp,
    }
    return Mapped(events=[DomainEvent(type="call.recorded", opportunity_id=opp, data=data)])


LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
#: ``drives/{drive}/items/{item}``, ``/drive/root``, ``sites/{site}/drive/root``, ``/me/drive/items/{item}``...
DRIVE_RESOURCE = re.compile(r"(?:^|/)(?:drives/(?P<drive>[^/]+)|drive)/(?:items/(?P<item>[^/]+)|(?P<root>root))/?$",
                            re.IGNORECASE)


def _drive_target(resource: str, resource_data: dict) -> dict:
    """Which drive and item a driveItem notification is about; ``drive_root`` when it names no item."""
    found = DRIVE_RESOURCE.search(resource)
    drive = found["drive"] if found else None
    item = (found["item"] if found else None) or resource_data.get("id")
    return {"drive_id": drive, "item_id": item, "drive_root": bool(found and found["root"]) and not item}


def _map_graph(note: dict) -> Mapped:
    base = {"subscription_id": note.get("subscriptionId"), "tenant_id": note.get("tenantId")}
    lifecycle = note.get("lifecycleEvent")
    if lifecycle:
        if lifecycle not in LIFECYCLE_EVENTS:
            return Mapped(ignored=f"unknown Graph lifecycle event {lifecycle!r}")
        data = {**base, "lifecycle_event": lifecycle, "expires_at": note.get("subscriptionExpirationDateTime")}
        return Mapped(events=[DomainEvent(type="graph.lifecycle", data=data)])
    resource = str(note.get("resource") or "")
    odata = str((note.get("resourceData") or {}).get("@odata.type") or "").lower()
    is_drive = "drive" in resource.lower() or odata.endswith("driveitem")
    is_sp_list = bool(note.get("siteUrl") or note.get("webId"))
    if not (is_drive or is_sp_list):
        return Mapped(ignored=f"Graph resource {resource!r} is not a document (driveItem or SharePoint list)")
    data = {
        **base,
        "resource": resource,
        "change_type": note.get("changeType") or "updated",
        "site_url": note.get("siteUrl"),
        "web_id": note.get("webId"),
    }
    if is_drive:
        data.update(_drive_target(resource, note.get("resourceData") or {}))
    return Mapped(events=[DomainEvent(type="document.changed", data=data)])


def _map_generic(doc: object) -> Mapped:
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not doc["type"]:
        return Mapped(ignored="generic event without a 'type'")
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    opp = data.get("opportunity_id")
    return Mapped(events=[DomainEvent(type=doc["type"], opportunity_id=str(opp) if opp else None, data=data)])
