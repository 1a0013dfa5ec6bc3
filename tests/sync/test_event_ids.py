"""The agreement with connectors/events.py: a fact seen by sync gets the event id its webhook gets.

The inbox is unique on (provider, connection, event id), so these ids are what makes a fact that
arrives both ways one event. Real webhook payloads from the shared data are split by the webhook
path's own ``split_delivery`` and compared with what the sync models derive for the same record.
"""

from __future__ import annotations

import json

from connectors.events import map_event, split_delivery
from connectors.sync_docusign import envelope_events
from connectors.sync_gong import call_events
from connectors.sync_graph import document_events
from tests.conftest import shared_data

JSON = {"content-type": "application/json"}


def test_gong_call_id_is_the_webhooks_and_maps_to_the_same_domain_event() -> None:
    body = shared_data("webhooks", "gong", "call_matched_rule.json").read_bytes()
    [delivered] = split_delivery("gong", body, JSON)
    call = json.loads(body)["callData"]
    [synced] = call_events(call, None)
    assert synced.id == delivered.event_id == f"call:{call['metaData']['id']}"
    assert call_events(call, previous=call) == []  # a call is announced once, when first seen
    ours = map_event("gong", synced.type, json.dumps(synced.body).encode(), "application/json").events
    theirs = map_event("gong", delivered.type, delivered.body, delivered.content_type).events
    assert [(e.type, e.opportunity_id) for e in ours] == [(e.type, e.opportunity_id) for e in theirs]


def test_docusign_completed_envelope_id_is_connects_for_the_same_envelope() -> None:
    xml = shared_data("webhooks", "docusign", "envelope-completed.legacy_xml.xml").read_bytes()
    [delivered] = split_delivery("docusign", xml, {"content-type": "text/xml"})
    envelope_id = delivered.event_id.split(":", 1)[0]
    envelope = {"envelopeId": envelope_id, "status": "completed", "statusChangedDateTime": "2024-05-01T12:00:00Z",
                "customFields": {"textCustomFields": [{"name": "opportunity_id", "value": "opp-9"}]}}
    [synced] = envelope_events(envelope, {"envelopeId": envelope_id, "status": "sent"})
    assert synced.id == delivered.event_id and synced.type == delivered.type == "envelope-completed"
    [again] = split_delivery("docusign", json.dumps(synced.body).encode(), JSON)  # Connect JSON, same id
    assert again.event_id == synced.id
    [signed] = map_event("docusign", synced.type, json.dumps(synced.body).encode(), "application/json").events
    assert (signed.type, signed.opportunity_id) == ("contract.signed", "opp-9")
    assert envelope_events(envelope, envelope) == []  # already completed: nothing new
    assert envelope_events({**envelope, "status": "delivered"}, None) == []


def test_stripe_events_keep_stripes_own_id() -> None:
    event = {"id": "evt_1PXyz", "object": "event", "type": "invoice.paid", "created": 1_700_000_000,
             "data": {"object": {"id": "in_1", "object": "invoice", "status": "paid"}}}
    [delivered] = split_delivery("stripe", json.dumps(event).encode(), JSON)
    assert delivered.event_id == "evt_1PXyz"  # sync_stripe attaches the same event (id and body) to the record


def test_graph_document_events_are_change_notifications_the_webhook_path_reads() -> None:
    item = {"id": "01ABC", "name": "proposal.docx", "file": {}, "eTag": '"{ABC},3"',
            "parentReference": {"driveId": "b!drive"}}
    [created] = document_events(item, None)
    [updated] = document_events({**item, "eTag": '"{ABC},4"'}, item)
    [deleted] = document_events({"id": "01ABC", "deleted": {"state": "deleted"}}, item)
    assert len({created.id, updated.id, deleted.id}) == 3 and created.id == document_events(item, None)[0].id
    for event in (created, updated, deleted):
        body = json.dumps(event.body).encode()
        [note] = split_delivery("microsoft", body, JSON)
        assert note.type == event.type
        assert [e.type for e in map_event("microsoft", event.type, body, "application/json").events] == [
            "document.changed"]
    assert document_events({"id": "01F", "folder": {}}, None) == []  # folders are not documents
