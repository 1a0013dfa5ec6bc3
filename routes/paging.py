"""Keyset cursors of the lists ordered by an integer id, newest first (rule runs, audit)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from hub.problems import Problem

MAX_ID = 2**31 - 1  # the ids are SQL integers


def encode_cursor(last_id: int) -> str:
    """The opaque cursor continuing after the row ``last_id``."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id a cursor continues after (None without one); 400 for a cursor this API did not make."""
    if cursor is None:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if kind == "id" and value.isdigit() and int(value) <= MAX_ID:
            return int(value)
    except (ValueError, binascii.Error):
        pass
    raise Problem(400, "invalid cursor", field="cursor")


def utc(at: datetime | None) -> datetime | None:
    """A timestamp in UTC (naive ones, as SQLite returns them, are UTC)."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
