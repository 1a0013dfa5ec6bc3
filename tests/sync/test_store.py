"""synced_records upserts: new, changed, unchanged, stale (the newest provider version wins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.auth import ensure_org
from hub.store import Database
from hub.store.connections import Connection
from hub.store.sync import RecordVersion, get_record, upsert_records

T0 = datetime(2024, 5, 1, tzinfo=UTC)


async def test_upsert_counts_each_outcome_and_never_rolls_back_to_an_older_version(db: Database) -> None:
    async with db.session() as s:
        await ensure_org(s, "acme")
        conn = Connection(org_id="acme", provider="stripe", name="s", auth_mode="api_key", config={}, status="active")
        s.add(conn)
    v1, v2, v3 = ({"id": "in_1", "status": st} for st in ("open", "paid", "void"))
    async with db.session() as s:
        first = await upsert_records(s, "acme", conn.id, "stripe.invoices", [
            RecordVersion("in_1", v1, T0), RecordVersion("in_2", {"id": "in_2"}),
            RecordVersion("in_1", v2, T0 + timedelta(seconds=5)),  # the same record twice in one page
        ])
    assert (first.new, first.changed, first.unchanged, first.stale) == (2, 1, 0, 0)
    async with db.session() as s:
        later = await upsert_records(s, "acme", conn.id, "stripe.invoices", [
            RecordVersion("in_1", v1, T0 + timedelta(seconds=1)),  # an older event read after a newer one
            RecordVersion("in_2", {"id": "in_2"}),  # unchanged
            RecordVersion("in_3", {"id": "in_3"}),
        ])
        assert (later.new, later.changed, later.unchanged, later.stale) == (1, 0, 1, 1)
        record = await get_record(s, conn.id, "stripe.invoices", "in_1")
        assert record.payload == v2 and record.changed_at == T0 + timedelta(seconds=5)
    async with db.session() as s:
        newest = await upsert_records(s, "acme", conn.id, "stripe.invoices", [RecordVersion("in_1", v3)])
        assert [(c.provider_id, c.previous, c.payload) for c in newest.changes] == [("in_1", v2, v3)]
        record = await get_record(s, conn.id, "stripe.invoices", "in_1")
        assert record.payload == v3 and record.first_seen_at < record.last_changed_at
