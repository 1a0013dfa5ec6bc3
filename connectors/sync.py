"""The sync-model interface: page fetchers registered by name, the page they return, the standard cursors.

A sync model (``stripe.invoices``, ``gong.calls``...) is declared in the catalogue under its provider's
``syncs`` (cursor kind, page size, schedule interval) and implemented by one async page fetcher::

    @sync_model("docusign.envelopes", events=envelope_events)
    async def envelopes(ctx: ActionContext, cursor: str | None, page_size: int) -> Page:
        window = WindowCursor.load(cursor)
        body = ...  # one provider request, with ctx.http / ctx.auth_headers() / ctx.url(...)
        records = [SyncRecord(e["envelopeId"], e, parse_time(e["statusChangedDateTime"])) for e in ...]
        return window.page(records, next_token)

A fetcher makes exactly one provider request per call (the provider's task-queue rate limit counts
requests by counting these calls), raises ``ProviderError`` (or lets ``httpx.HTTPStatusError`` escape)
like an action, and returns a ``Page``: the records, the cursor to continue from, and whether this run
is complete. When ``done`` is true ``next_cursor`` is where the *next* run starts (an incremental
watermark, a delta link), never None unless the model always re-reads everything.

Cursors are opaque strings to everyone but their fetcher. The standard kinds have helpers here:

* ``WindowCursor`` — catalogue kinds ``timestamp`` and ``page_token``: a time window (``since``, the
  provider's change-time filter such as Stripe ``created[gte]``, Gong ``fromDateTime``, DocuSign
  ``from_date``) paged either with the provider's token inside the window (``page``: Stripe
  ``starting_after``, Gong ``records.cursor``) or, for lists in ascending change time, by moving
  ``since`` to the newest time seen (``keyset_page``: DocuSign). The newest change time seen becomes
  the next run's start (minus an optional overlap for late-arriving records — re-read records are
  unchanged, so they are never counted or announced twice).
* ``LinkCursor`` — catalogue kind ``delta_link``: the provider's own continuation URL (Graph
  ``@odata.nextLink`` while paging, ``@odata.deltaLink`` to start the next run).

Change events: a record that is new or changed may be announced as a provider event in the provider's
webhook format, with the same event id a webhook for the same fact carries, so the inbox (unique on
provider + connection + event id) keeps one of the two and a rule fires once. Either the fetcher attaches
the provider's own event to the record (``SyncRecord.event``, e.g. Stripe's events list) or the model
registers an ``events`` function that derives them from the record (see ``ProviderEvent``).

Provider modules are ``connectors/sync_<name>.py`` and are imported by ``import_sync_modules()``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import ActionContext
from connectors.catalogue import Provider, SyncModel, catalogue


@dataclass(frozen=True)
class ProviderEvent:
    """An event as the provider's webhook would deliver it: its dedupe id, its type and its JSON body."""

    id: str
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class SyncRecord:
    """One provider record: its provider id, its payload and the provider's time of this version."""

    id: str
    payload: dict[str, Any]
    changed_at: datetime | None = None
    event: ProviderEvent | None = None  # the provider's own event that carried this version, if any


@dataclass(frozen=True)
class Page:
    """One provider response: records, the cursor to continue from, and whether the run is complete."""

    records: list[SyncRecord]
    next_cursor: str | None
    done: bool


Fetcher = Callable[[ActionContext, str | None, int], Awaitable[Page]]
EventDeriver = Callable[[dict[str, Any], dict[str, Any] | None], list[ProviderEvent]]


@dataclass(frozen=True)
class SyncModelSpec:
    """A registered sync model: its full name, fetcher and change-event deriver."""

    name: str
    fetch: Fetcher
    events: EventDeriver | None = None

    @property
    def prefix(self) -> str:
        """The provider's action prefix (``sharepoint`` for ``sharepoint.documents``): it names the task queue."""
        return self.name.split(".", 1)[0]

    @property
    def provider(self) -> Provider:
        """The catalogue entry of the model's provider."""
        return catalogue().for_action(self.name)

    @property
    def settings(self) -> SyncModel:
        """The catalogue's declaration: cursor kind, page size, interval."""
        return declared_model(self.name)


SYNC_MODELS: dict[str, SyncModelSpec] = {}


def sync_model(name: str, *, events: EventDeriver | None = None) -> Callable[[Fetcher], Fetcher]:
    """Register ``async def f(ctx, cursor, page_size) -> Page`` as sync model ``name`` (``<prefix>.<model>``)."""
    if "." not in name:
        raise ValueError(f"sync model name {name!r} must be '<provider prefix>.<model>'")

    def register(fn: Fetcher) -> Fetcher:
        existing = SYNC_MODELS.get(name)
        if existing is not None and existing.fetch.__qualname__ != fn.__qualname__:
            raise ValueError(f"sync model {name!r} is registered twice ({existing.fetch.__module__}, {fn.__module__})")
        SYNC_MODELS[name] = SyncModelSpec(name, fn, events)
        return fn

    return register


def declared_models(provider: Provider) -> dict[str, SyncModel]:
    """The sync models a provider's catalogue entry declares, by full name (``stripe.invoices``)."""
    return {f"{provider.action_prefix}.{m.name}": m for m in provider.syncs}


def declared_model(name: str) -> SyncModel:
    """One declared sync model by full name; KeyError if the catalogue has none."""
    prefix, _, short = name.partition(".")
    for entry in catalogue().providers.values():
        if entry.action_prefix == prefix:
            for model in entry.syncs:
                if model.name == short:
                    return model
    raise KeyError(f"no provider declares sync model {name!r}")


def import_sync_modules() -> list[str]:
    """Import every ``connectors/sync_*.py`` module (which registers its models); returns their names."""
    import connectors

    names = [f"connectors.{m.name}" for m in pkgutil.iter_modules(connectors.__path__) if m.name.startswith("sync_")]
    for name in names:
        importlib.import_module(name)
    return sorted(names)


def get_spec(name: str) -> SyncModelSpec:
    """A registered sync model (provider modules imported on first use); KeyError if none."""
    if name not in SYNC_MODELS:
        import_sync_modules()
    try:
        return SYNC_MODELS[name]
    except KeyError:
        raise KeyError(f"no sync model {name!r} is registered; known: {', '.join(sorted(SYNC_MODELS))}") from None


# --- time helpers ----------------------------------------------------------------------------------------


def parse_time(value: str | int | float | None) -> datetime | None:
    """An ISO-8601 string (``Z`` allowed, 7-digit fractions truncated) or epoch seconds → aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    text = value.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # .NET-style 7-digit fractions (DocuSign): keep microseconds
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    parsed = datetime.fromisoformat(text)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    """``2024-05-01T12:00:00Z`` (UTC, seconds precision unless fractional)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- standard cursors ----------------------------------------------------------------------------------


def dump_cursor(doc: dict[str, Any]) -> str:
    """A cursor document as a compact, stable string (None values dropped)."""
    return json.dumps({k: v for k, v in doc.items() if v is not None}, separators=(",", ":"), sort_keys=True)


def load_cursor(cursor: str | None) -> dict[str, Any]:
    """The document of a cursor made by ``dump_cursor`` (None or empty → ``{}``)."""
    if not cursor:
        return {}
    doc = json.loads(cursor)
    if not isinstance(doc, dict):
        raise ValueError(f"not a sync cursor: {cursor[:80]!r}")
    return doc


@dataclass
class WindowCursor:
    """A change-time window paged with the provider's token (kinds ``timestamp`` and ``page_token``).

    ``since``: the window's lower bound (None: from the beginning, a backfill); ``token``: the
    provider's page token inside the window; ``high``: the newest change time seen so far in it.
    """

    since: datetime | None = None
    token: str | None = None
    high: datetime | None = None

    @classmethod
    def load(cls, cursor: str | None) -> WindowCursor:
        """Decode a cursor made by ``dump`` (None or empty → a backfill from the beginning)."""
        doc = load_cursor(cursor)
        return cls(parse_time(doc.get("since")), doc.get("token"), parse_time(doc.get("high")))

    def dump(self) -> str:
        """The opaque cursor string."""
        return dump_cursor({"since": self.since and iso(self.since), "token": self.token,
                            "high": self.high and iso(self.high)})

    def seen(self, times: Iterable[datetime | None]) -> WindowCursor:
        """This window with ``high`` moved to the newest of ``times``."""
        high = max([t for t in times if t is not None] + ([self.high] if self.high else []), default=None)
        return WindowCursor(self.since, self.token, high)

    def following(self, next_token: str | None, overlap: timedelta = timedelta(0)) -> tuple[WindowCursor, bool]:
        """The cursor after a page: the same window's next page, or (no token) the next window; and done."""
        if next_token:
            return WindowCursor(self.since, next_token, self.high), False
        start = self.high - overlap if self.high else self.since
        if self.since is not None and start is not None and start < self.since:
            start = self.since
        return WindowCursor(start, None, self.high), True

    def page(self, records: list[SyncRecord], next_token: str | None, overlap: timedelta = timedelta(0)) -> Page:
        """The ``Page`` for ``records`` fetched in this window, continuing with ``next_token`` if any."""
        after, done = self.seen(r.changed_at for r in records).following(next_token, overlap)
        return Page(records, after.dump(), done)

    def keyset_page(self, records: list[SyncRecord], full: bool, page_size: int) -> Page:
        """The ``Page`` for a provider that lists oldest change first, filtered by ``since`` (inclusive).

        The next page starts at the newest change time seen, so records changing while we page are never
        skipped (records sharing that time are read again and found unchanged); a full page that did not
        move the time forward continues by offset (``token``) at the same ``since``. A page that is not
        full ends the run; the next run starts at the newest time seen.
        """
        seen = self.seen(r.changed_at for r in records)
        if not full:
            return Page(records, WindowCursor(seen.high or self.since, None, seen.high).dump(), True)
        if seen.high is not None and (self.since is None or seen.high > self.since):
            return Page(records, WindowCursor(seen.high, None, seen.high).dump(), False)
        offset = int(self.token or 0) + page_size
        return Page(records, WindowCursor(self.since, str(offset), seen.high).dump(), False)


@dataclass
class LinkCursor:
    """The provider's continuation link (kind ``delta_link``): next page while paging, delta link between runs."""

    link: str | None = None

    @classmethod
    def load(cls, cursor: str | None) -> LinkCursor:
        """Decode (None → start from the model's initial request)."""
        return cls(load_cursor(cursor).get("link"))

    @staticmethod
    def page(records: list[SyncRecord], next_link: str | None, delta_link: str | None) -> Page:
        """A page continuing at ``next_link``; without one the run is done and the next starts at ``delta_link``."""
        if next_link:
            return Page(records, dump_cursor({"link": next_link}), False)
        if not delta_link:
            raise ValueError("the provider's last page carries neither a next link nor a delta link")
        return Page(records, dump_cursor({"link": delta_link}), True)
