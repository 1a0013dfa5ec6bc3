"""Connections to providers (Slack, Stripe, ...): non-secret config and status.

Their secrets (tokens, client secrets, webhook signing secrets) live in the ``secrets`` table under
the owner ``connection:{id}``; see ``hub.store.secrets``.
"""

from __future__ import annotations

import secrets as _random
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow

STATUSES = ("pending_auth", "active", "needs_reauth", "disabled")


def new_connection_id() -> str:
    """A fresh connection id, e.g. ``con_3f9a0c1b2d4e``."""
    return f"con_{_random.token_hex(6)}"


def secret_owner(connection_id: str) -> str:
    """The ``secrets.owner`` of a connection's secrets."""
    return f"connection:{connection_id}"


class Connection(Base):
    """One org's connection to one provider."""

    __tablename__ = "connections"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_connection_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    auth_mode: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32), default="pending_auth")
    access_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_refresh_at: Mapped[datetime | None] = mapped_column(default=None)
    next_refresh_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # migration 0006 (connection lifecycle): bumped on every stored token; set while a refresh is in flight
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    refresh_pending_since: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
