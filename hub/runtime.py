"""The process-wide runtime: settings, database, vault, the API key cache, the egress policy, the orgs' data keys and (once reachable) the Temporal client."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from temporalio.client import Client

from hub.auth import KeyCache
from hub.datadir import make_private
from hub.egress import EgressPolicy
from hub.org_keys import OrgKeyring
from hub.settings import Settings
from hub.store import Database
from hub.temporal import connect
from hub.vault import Vault

log = logging.getLogger("hub.runtime")


class TemporalUnavailable(Exception):
    """Temporal cannot be reached right now."""


@dataclass
class Hub:
    """Everything a request handler, the worker or the CLI needs, built once per process."""

    settings: Settings
    db: Database
    vault: Vault
    temporal_address: str | None = None
    keys: KeyCache | None = None
    egress: EgressPolicy | None = None
    keyring: OrgKeyring | None = None
    _client: Client | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, temporal_address: str | None = None) -> Hub:
        """Build the runtime; nothing is connected yet."""
        make_private(settings.data_dir)
        return cls(
            settings=settings,
            db=Database(settings.resolved_database_url),
            vault=Vault.from_settings(settings),
            temporal_address=temporal_address or settings.temporal_address,
        )

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeyCache(ttl=self.settings.api_key_cache_seconds)
        if self.egress is None:
            self.egress = EgressPolicy.from_settings(self.settings)
        if self.keyring is None:
            self.keyring = OrgKeyring(self.db, self.vault)

    def use_client(self, client: Client) -> None:
        """Adopt an already connected Temporal client (tests, the worker)."""
        self._client = client

    async def temporal(self) -> Client:
        """The Temporal client, connecting on first use; raises TemporalUnavailable if unreachable."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect(self.settings, self.vault, self.temporal_address, self.keyring), timeout=5
                    )
                except Exception as exc:  # any connect failure means unavailable
                    raise TemporalUnavailable(f"Temporal at {self.temporal_address} unreachable: {exc}") from exc
        return self._client

    async def close(self) -> None:
        """Release the database pool."""
        await self.db.dispose()
