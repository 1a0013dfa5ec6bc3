"""Provider events → inbox events → domain events, on the real payloads."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

import pytest

from activities.webhooks import required_document
from connectors.events import REDACTED, MalformedEvent, get, map_event, split_delivery
from connectors.sync_graph import document_events
from tests.conftest import shared_data
from tests.webhooks.fixtures import FOLDERS, content_type, payload_files

#: (folder, file) → the domain event it maps to; every other file is ignored with a reason.
MAPPED = {
    ("stripe", "invoice.paid.json"): "payment.received",
    ("stripe", "invoice.payment_failed.json"): "payment.failed",
    ("stripe", "customer.subscription.deleted.json"): "subscription.canceled",
    ("docusign", "envelope-completed.legacy_xml.xml"): "contract.signed",
    ("docusign", "envelope-sent.legacy_xml.xml"): "contract.sent",
    ("gong", "call_matched_rule.json"): "call.recorded",
    ("slack", "block_actions.json"): "slack.action",
    ("msgraph", "change_notification.driveItem.onedrive.json"): "document.changed",
    ("msgraph", "change_notification.list.sharepoint.json"): "document.changed",
}


def _body(path) -> bytes:
    raw = path.read_bytes()
    if path.parent.name == "slack" and path.suffix == ".json":
        doc = json.loads(raw)
        if doc.get("type") not in ("event_callback", "url_verification", "app_rate_limited"):
            return urlencode({"payload": json.dumps(doc)}).encode()  # interactivity is form-encoded
    return raw


def _ctype(path) -> str:
    if path.parent.name == "slack" and b"payload=" in _body(path)[:8]:
        return "application/x-www-form-urlencoded"
    return content_type(path)


def test_every_shared_payload_maps_or_is_ignored_with_a_reason() -> None:
    seen_mapped = set()
    files = payload_files()
    assert len(files) >= 110
    for scheme, _, path in files:
        parts = split_delivery(scheme, _body(path), {"content-type": _ctype(path)})
        assert parts, path
        for part in parts:
            assert part.event_id and part.type, path
            mapped = map_event(scheme, part.type, part.body, part.content_type)
            key = (path.parent.name, path.name)
            if key in MAPPED:
                assert [e.type for e in mapped.events] == [MAPPED[key]], path
                assert mapped.ignored is None
                seen_mapped.add(key)
            else:
                assert not mapped.events, path
                assert mapped.ignored and len(mapped.ignored) > 10, path
    assert seen_mapped == set(MAPPED)


def test_event_ids_and_types_come_from_the_provider() -> None:
    stripe = shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes()
    [part] = split_delivery("stripe", stripe, {"content-type": "application/json"})
    assert (part.event_id, part.type) == ("evt_000000000000000000000000", "invoice.paid")
    slack = shared_data("webhooks", "slack", "event_callback.app_mention.json").read_bytes()
    [part] = split_delivery("slack", slack, {"content-type": "application/json"})
    assert (part.event_id, part.type) == ("Ev111", "event_callback.app_mention")
    xml = shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml").read_bytes()
    [part] = split_delivery("docusign", xml, {"content-type": "text/xml"})
    assert (part.event_id, part.type) == ("08740f95-2187-4b01-9a69-452ae3140752:envelope-completed",
                                          "envelope-completed")
    gong = shared_data("webhooks", "gong", "call_matched_rule.json").read_bytes()
    [part] = split_delivery("gong", gong, {})
    assert (part.event_id, part.type) == ("call:5599332235511222779", "call")
    hub = shared_data("webhooks", "hubspot", "contact.creation.json").read_bytes()
    [part] = split_delivery("hubspot", hub, {})
    assert (part.event_id, part.type) == ("1", "contact.creation")


def test_payment_received_carries_the_opportunity_from_metadata() -> None:
    doc = json.loads(shared_data("webhooks", "stripe", "invoice.paid.json").read_bytes())
    doc["data"]["object"]["metadata"] = {"opportunity_id": "opp_42"}
    mapped = map_event("stripe", "invoice.paid", json.dumps(doc).encode(), "application/json")
    [event] = mapped.events
    assert event.type == "payment.received" and event.opportunity_id == "opp_42"
    assert event.data["amount_paid"] == 2000 and event.data["currency"] == "usd"
    doc["data"]["object"]["metadata"] = {}
    doc["data"]["object"]["subscription_details"] = {"metadata": {"opportunity_id": "opp_7"}}
    [event] = map_event("stripe", "invoice.paid", json.dumps(doc).encode(), "application/json").events
    assert event.opportunity_id == "opp_7"


def test_subscription_canceled_data() -> None:
    body = shared_data("webhooks", "stripe", "customer.subscription.deleted.json").read_bytes()
    [event] = map_event("stripe", "customer.subscription.deleted", body, "application/json").events
    assert event.data["subscription_id"] == "sub_000000000000000000000000"
    assert event.data["status"] == "canceled" and event.opportunity_id is None


def test_invoice_payment_succeeded_is_ignored_as_the_same_payment() -> None:
    body = shared_data("webhooks", "stripe", "invoice.payment_succeeded.json").read_bytes()
    assert "invoice.paid" in map_event("stripe", "invoice.payment_succeeded", body, "application/json").ignored


def test_contract_signed_from_legacy_xml_custom_field() -> None:
    xml = shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml").read_bytes()
    [event] = map_event("docusign", "envelope-completed", xml, "text/xml").events
    assert event.opportunity_id is None
    assert event.data["custom_fields"]["AccountName"] == "World Wide Corp"
    assert event.data["signers"] == [{"email": "larry.kluger@example.com", "name": "Larry Kluger"}]
    field = b"<CustomField><Name>opportunity_id</Name><Value>opp_9</Value></CustomField>"
    with_opp = xml.replace(b"<CustomFields>\n         <CustomField>", b"<CustomFields>" + field + b"<CustomField>", 1)
    [event] = map_event("docusign", "envelope-completed", with_opp, "text/xml").events
    assert event.opportunity_id == "opp_9" and event.data["envelope_id"] == "08740f95-2187-4b01-9a69-452ae3140752"


def test_contract_signed_from_connect_json() -> None:
    body = json.dumps({
        "event": "envelope-completed", "apiVersion": "v2.1", "retryCount": 0,
        "generatedDateTime": "2024-05-01T10:00:00.000Z",
        "data": {
            "accountId": "acc", "envelopeId": "env-1",
            "envelopeSummary": {
                "status": "completed", "emailSubject": "MSA", "completedDateTime": "2024-05-01T09:59:00Z",
                "customFields": {"textCustomFields": [{"name": "OpportunityId", "value": "opp_3"}]},
                "recipients": {"signers": [{"email": "a@b.c", "name": "A B"}]},
            },
        },
    }).encode()  # fmt: skip
    [part] = split_delivery("docusign", body, {"content-type": "application/json"})
    assert (part.event_id, part.type) == ("env-1:envelope-completed", "envelope-completed")
    [event] = map_event("docusign", part.type, body, "application/json").events
    assert (event.type, event.opportunity_id, event.data["subject"]) == ("contract.signed", "opp_3", "MSA")
    sent = body.replace(b"envelope-completed", b"envelope-sent")
    [event] = map_event("docusign", "envelope-sent", sent, "application/json").events
    assert (event.type, event.opportunity_id, event.data["status"]) == ("contract.sent", "opp_3", "sent")
    voided = json.loads(body.replace(b"envelope-completed", b"envelope-voided"))
    voided["data"]["envelopeSummary"]["voidedReason"] = "Customer chose another vendor"
    [event] = map_event("docusign", "envelope-voided", json.dumps(voided).encode(), "application/json").events
    assert (event.type, event.data["status"], event.data["reason"]) == (
        "contract.declined", "voided", "Customer chose another vendor")
    assert "only sent, completed, declined and voided" in map_event(
        "docusign", "envelope-delivered", body.replace(b"envelope-completed", b"envelope-delivered"),
        "application/json").ignored


def declined_xml(status: str, reason: str) -> bytes:
    """DocuSign's sample "sent" Connect message as the same envelope declined or voided (DocuSign publishes no
    licensed sample of those): the envelope's status, and its DeclineReason or VoidReason."""
    xml = shared_data("webhooks", "docusign", "envelope-sent.legacy_xml.xml").read_bytes()
    head, tail = xml.split(b"<Subject>", 1)
    tail = tail.replace(b"<Status>Sent</Status>", f"<Status>{status}</Status>".encode(), 1)
    if status == "Voided":
        tail = tail.replace(b"<Created>", f"<VoidReason>{reason}</VoidReason><Created>".encode(), 1)
    else:
        head = head.replace(b'<DeclineReason xsi:nil="true" />', f"<DeclineReason>{reason}</DeclineReason>".encode(), 1)
    return head + b"<Subject>" + tail


@pytest.mark.parametrize(("status", "reason"), [("Declined", "Terms not acceptable"), ("Voided", "Duplicate")])
def test_declined_and_voided_envelopes_are_contract_declined(status: str, reason: str) -> None:
    [part] = split_delivery("docusign", declined_xml(status, reason), {"content-type": "text/xml"})
    assert part.type == f"envelope-{status.lower()}"
    [event] = map_event("docusign", part.type, part.body, "text/xml").events
    assert (event.type, event.data["status"], event.data["reason"]) == ("contract.declined", status.lower(), reason)
    assert event.data["envelope_id"] == "08740f95-2187-4b01-9a69-111111111111"


def test_call_recorded_takes_the_opportunity_from_the_crm_context() -> None:
    body = shared_data("webhooks", "gong", "call_matched_rule.json").read_bytes()
    [event] = map_event("gong", "call", body, "application/json").events
    assert event.opportunity_id == "0061Q00000mkU1fQAE"
    assert event.data["account_id"] == "0011630000vmLBaEEN" and event.data["crm_system"] == "Salesforce"
    assert event.data["duration_s"] == 2159 and event.data["participants"]


def test_slack_approval_button_becomes_an_approval() -> None:
    doc = json.loads(shared_data("webhooks", "slack", "block_actions.json").read_bytes())
    doc["actions"][0]["action_id"] = "approve"
    doc["actions"][0]["value"] = json.dumps({"opportunity_id": "opp_5", "request": "discount-20"})
    body = urlencode({"payload": json.dumps(doc)}).encode()
    [event] = map_event("slack", "block_actions", body, "application/x-www-form-urlencoded").events
    assert event.type == "slack.action" and event.opportunity_id == "opp_5"
    assert event.data["approval"] == {"decision": "approved", "request": "discount-20", "by": "W111"}
    plain = shared_data("webhooks", "slack", "block_actions.json").read_bytes()
    [event] = map_event("slack", "block_actions", urlencode({"payload": plain.decode()}).encode(),
                        "application/x-www-form-urlencoded").events
    assert "approval" not in event.data and event.data["value"] == "click_me_123"


@pytest.mark.parametrize(("lifecycle", "work"), [("reauthorizationRequired", "renew_subscription"),
                                                 ("subscriptionRemoved", "create_subscription"),
                                                 ("missed", "sync_documents")])
def test_graph_lifecycle_notifications(lifecycle: str, work: str) -> None:
    raw = shared_data("webhooks", "msgraph", "lifecycle_notification.template.json").read_text()
    body = raw.replace("subscriptionRemoved or missed or reauthorizationRequired", lifecycle).encode()
    [part] = split_delivery("microsoft", body, {"content-type": "application/json"})
    assert part.type == f"lifecycle.{lifecycle}"
    [event] = map_event("microsoft", part.type, part.body, part.content_type).events
    assert event.type == "graph.lifecycle" and event.data["lifecycle_event"] == lifecycle
    assert event.data["subscription_id"] == "<subscription_guid>"
    assert get("microsoft").follow_up(event) == work
    assert get("generic").follow_up(event) is None  # only Graph's own events lead to Graph calls


def _document_event(body: bytes):
    [part] = split_delivery("microsoft", body, {"content-type": "application/json"})
    [event] = map_event("microsoft", part.type, part.body, part.content_type).events
    assert event.type == "document.changed" and event.opportunity_id is None
    return event


def test_graph_document_changes_name_their_item_or_their_drive() -> None:
    onedrive = _document_event(
        shared_data("webhooks", "msgraph", "change_notification.driveItem.onedrive.json").read_bytes())
    assert (onedrive.data["drive_root"], onedrive.data["item_id"]) == (True, None)  # Graph names no item:
    assert get("microsoft").follow_up(onedrive) == "sync_documents"  # the delta query finds it
    item = {"id": "01ABC", "name": "Acme - Order form.docx", "file": {}, "eTag": '"{ABC},3"',
            "parentReference": {"driveId": "b!drive"}}
    [synced] = document_events(item, None)  # what the documents sync writes to the inbox for one file
    located = _document_event(json.dumps(synced.body).encode())
    assert (located.data["item_id"], located.data["drive_id"], located.data["drive_root"]) == ("01ABC", "b!drive",
                                                                                              False)
    assert get("microsoft").follow_up(located) == "locate_document"
    sharepoint_list = _document_event(
        shared_data("webhooks", "msgraph", "change_notification.list.sharepoint.json").read_bytes())
    assert "item_id" not in sharepoint_list.data and get("microsoft").follow_up(sharepoint_list) is None


def test_a_file_is_the_required_document_its_name_or_folder_says() -> None:
    documents = ["discovery_notes", "mutual_action_plan", "proposal", "order_form", "signed_contract"]
    assert required_document(documents, "02 Engage/Discovery/Globex - Discovery notes.docx") == "discovery_notes"
    assert required_document(documents, "02 Engage/Mutual action plan/v3.xlsx") == "mutual_action_plan"
    assert required_document(documents, "03 Acquire/Contracts/globex_signed-contract.pdf") == "signed_contract"
    assert required_document(documents, "03 Acquire/Proposal/Order form (draft).docx") == "order_form"
    assert required_document(documents, "03 Acquire/Proposal/pricing.xlsx") == "proposal"
    assert required_document(documents, "01 Prospect/Research/notes.docx") is None
    assert required_document(documents, "03 Acquire/Legal/counter-proposals.docx") is None  # whole words only


def test_secrets_are_not_kept_in_stored_bodies() -> None:
    graph = shared_data("webhooks", "msgraph", "change_notification.message.created.json").read_bytes()
    [part] = split_delivery("microsoft", graph, {"content-type": "application/json"})
    assert b"secretClientValue" not in part.body and REDACTED.encode() in part.body
    slack = shared_data("webhooks", "slack", "event_callback.message.json").read_bytes()
    [part] = split_delivery("slack", slack, {"content-type": "application/json"})
    assert b"verification_token" not in part.body and json.loads(part.body)["event_id"] == "Ev111"
    form = shared_data("webhooks", "slack", "slash_command.form-urlencoded.txt").read_bytes()
    [part] = split_delivery("slack", form, {"content-type": "application/x-www-form-urlencoded"})
    assert dict(parse_qsl(part.body.decode()))["token"] == REDACTED and part.type == "slash_command"


def test_one_graph_delivery_with_several_notifications_is_several_events() -> None:
    note = json.loads(shared_data("webhooks", "msgraph", "change_notification.driveItem.onedrive.json").read_bytes())
    second = dict(note["value"][0], resource="/drive/items/2")
    body = json.dumps({"value": [note["value"][0], second]}).encode()
    parts = split_delivery("microsoft", body, {"content-type": "application/json"})
    assert len({p.event_id for p in parts}) == 2


def test_unreadable_verified_bodies_are_malformed() -> None:
    with pytest.raises(MalformedEvent):
        split_delivery("stripe", b"{not json", {})
    with pytest.raises(MalformedEvent):
        split_delivery("stripe", b'{"type": "invoice.paid"}', {})
    with pytest.raises(MalformedEvent, match="DTD"):
        split_delivery("docusign", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x/>', {})
    with pytest.raises(MalformedEvent):
        split_delivery("generic", b'{"type": "x"}', {})


def test_generic_events_name_their_domain_type() -> None:
    body = b'{"id": "m1", "type": "contract.signed", "data": {"opportunity_id": "opp_1", "document": "msa"}}'
    [part] = split_delivery("generic", body, {"webhook-id": "m1"})
    [event] = map_event("generic", part.type, body, "application/json").events
    assert (event.type, event.opportunity_id, event.data["document"]) == ("contract.signed", "opp_1", "msa")


def test_folders_cover_every_shared_provider() -> None:
    assert {p.name for p in shared_data("webhooks").iterdir() if p.is_dir()} <= set(FOLDERS)


def test_buttons_posted_by_slack_post_approval_map_to_approvals() -> None:
    doc = json.loads(shared_data("webhooks", "slack", "block_actions.json").read_bytes())
    doc["actions"][0].update(action_id="fulqrun.approval.reject", block_id="fulqrun_approval",
                             value=json.dumps({"opportunity_id": "opp_8", "request": "r1", "decision": "reject"}))
    body = urlencode({"payload": json.dumps(doc)}).encode()
    [event] = map_event("slack", "block_actions", body, "application/x-www-form-urlencoded").events
    assert event.opportunity_id == "opp_8" and event.data["approval"]["decision"] == "rejected"
