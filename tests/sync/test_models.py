"""The sync-model registry against the catalogue, and the standard cursors (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.catalogue import catalogue
from connectors.sync import (
    SYNC_MODELS,
    LinkCursor,
    SyncRecord,
    WindowCursor,
    declared_models,
    import_sync_modules,
    parse_time,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_every_declared_sync_model_has_a_fetcher_and_every_fetcher_is_declared() -> None:
    import_sync_modules()
    declared = {name for p in catalogue().providers.values() for name in declared_models(p)}
    assert declared == set(SYNC_MODELS)
    assert declared >= {"stripe.customers", "stripe.invoices", "stripe.subscriptions", "gong.calls",
                        "docusign.envelopes", "sharepoint.documents"}
    assert SYNC_MODELS["sharepoint.documents"].provider.key == "microsoft"


def records(*minutes: int) -> list[SyncRecord]:
    return [SyncRecord(f"r{m}", {"m": m}, T0 + timedelta(minutes=m)) for m in minutes]


def test_window_cursor_pages_with_the_provider_token_then_starts_the_next_run_at_the_newest_change() -> None:
    first = WindowCursor.load(None)
    page = first.page(records(5, 9), "tok-2")
    assert not page.done
    middle = WindowCursor.load(page.next_cursor)
    assert (middle.since, middle.token, middle.high) == (None, "tok-2", T0 + timedelta(minutes=9))
    last = middle.page(records(1), None, overlap=timedelta(minutes=3))
    assert last.done
    following = WindowCursor.load(last.next_cursor)
    assert (following.since, following.token) == (T0 + timedelta(minutes=6), None)  # newest (9) − overlap (3)
    again = following.page([], None, overlap=timedelta(minutes=30))  # never moves back before its own start
    assert WindowCursor.load(again.next_cursor).since == T0 + timedelta(minutes=6)


def test_keyset_window_moves_since_forward_and_falls_back_to_an_offset_on_a_page_of_ties() -> None:
    start = WindowCursor(since=T0)
    page = start.keyset_page(records(1, 2, 3), full=True, page_size=3)
    assert not page.done and WindowCursor.load(page.next_cursor).since == T0 + timedelta(minutes=3)
    ties = WindowCursor(since=T0 + timedelta(minutes=3))
    page = ties.keyset_page(records(3, 3, 3), full=True, page_size=3)
    stuck = WindowCursor.load(page.next_cursor)
    assert (stuck.since, stuck.token) == (T0 + timedelta(minutes=3), "3")
    page = stuck.keyset_page(records(3, 4), full=False, page_size=3)
    assert page.done and WindowCursor.load(page.next_cursor).since == T0 + timedelta(minutes=4)


def test_link_cursor_follows_next_links_and_keeps_the_delta_link_for_the_next_run() -> None:
    assert LinkCursor.load(None).link is None
    paging = LinkCursor.page([], "https://graph/next?skip=2", "https://graph/delta?token=9")
    assert not paging.done and LinkCursor.load(paging.next_cursor).link == "https://graph/next?skip=2"
    done = LinkCursor.page([], None, "https://graph/delta?token=9")
    assert done.done and LinkCursor.load(done.next_cursor).link == "https://graph/delta?token=9"
    with pytest.raises(ValueError, match="neither a next link nor a delta link"):
        LinkCursor.page([], None, None)


def test_parse_time_reads_iso_with_z_seven_digit_fractions_offsets_and_epoch_seconds() -> None:
    assert parse_time("2024-05-01T12:00:00Z") == T0
    assert parse_time("2024-05-01T12:00:00.1234567Z") == T0 + timedelta(microseconds=123456)
    assert parse_time("2024-05-01T14:00:00+02:00") == T0 and parse_time("2024-05-01T14:00:00+02:00").tzinfo == UTC
    assert parse_time(int(T0.timestamp())) == T0
    assert parse_time(None) is None and parse_time("") is None
