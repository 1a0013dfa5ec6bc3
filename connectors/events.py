"""Provider webhook schemes: one delivery → inbox events → domain events. Pure: no I/O, no clock.

Each provider with webhooks registers one ``WebhookScheme`` from its own module (``connectors/stripe.py``,
``slack.py``, ``docusign.py``, ``gong.py``, ``sharepoint.py``, ``hubspot.py``, ``generic.py``) the way it
registers its actions (``@action``) and sync models (``@sync_model``), and its catalogue entry names it
(``webhook: {signing: stripe}``)::

    @webhook_scheme
    class AcmeWebhooks(WebhookScheme):
        name = "acme"  # what the catalogue entry's webhook.signing names
        description = "X-Acme-Signature, hex HMAC-SHA256 of the body"

        def verify(self, delivery, creds, now=None): ...
        def split(self, body, headers): ...
        def map(self, event_type, body, content_type): ...
        def sign(self, body, content_type, creds, url, now): ...

A scheme says everything the hub does differently per provider, in the order a delivery meets it:

* ``challenge`` — a handshake answered before the signature is checked (Graph's ``validationToken``);
* ``verify`` — the signature over the raw bytes (``needs_url``: it also covers the endpoint's public URL);
* ``handshake`` — a handshake answered after it (Slack's ``url_verification``);
* ``split`` — the events of one delivery: the provider's event id (the dedupe key), its type and the bytes to
  keep in the inbox (secrets such as Slack's verification token or Graph's ``clientState`` removed);
* ``ack_status`` / ``ack_counts`` — the acknowledgement the provider expects;
* ``map`` — one stored event → domain events, or why it is ignored; ``follow_up`` — provider work a mapped
  event asks for before it is signalled (Graph subscriptions, document lookups);
* ``sign`` / ``new_id`` / ``secret_errors`` — what ``webhooks send`` and connection creation need.

The router, the relay, ``webhooks send`` and the sync look a scheme up by provider (``for_provider``: one
dict get once the table is built) or by name (``get``); none of them names a provider. The cryptography
itself is in ``connectors.signing``.

Domain events by provider (each module's docstring of ``map`` says more):

| provider | event | domain event | opportunity from |
|---|---|---|---|
| stripe | ``invoice.paid`` / ``invoice.payment_failed`` / ``customer.subscription.deleted`` | ``payment.received`` / ``payment.failed`` / ``subscription.canceled`` | ``metadata.opportunity_id`` |
| docusign | envelope completed / sent / declined or voided | ``contract.signed`` / ``contract.sent`` / ``contract.declined`` | envelope custom field ``opportunity_id`` |
| gong | a call (``callData.metaData.id``) | ``call.recorded`` | the CRM context object of type ``Opportunity`` |
| slack | ``block_actions`` (a button) | ``slack.action`` (+ ``approval``) | the button value's ``opportunity_id`` |
| microsoft | change notification on a driveItem or a SharePoint list / lifecycle notification | ``document.changed`` / ``graph.lifecycle`` | — |
| hubspot | any (``contact.creation``...) | — (recorded, not mapped) | — |
| generic | any event with a ``type`` | that type, verbatim | ``data.opportunity_id`` |
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import orjson
from pydantic import BaseModel, Field

from connectors.catalogue import catalogue, import_action_modules
from hub.store.inbox import HUB_PROVIDER
from rules import limits

REDACTED = "[redacted]"


class MalformedEvent(ValueError):
    """A verified delivery whose content cannot be read (bad JSON/XML/form, no event id)."""


class EventTooLarge(MalformedEvent):
    """A body nested, listing or holding strings beyond the input limits; refused before any signature check."""


class MalformedRequest(ValueError):
    """A handshake request the hub will not answer (e.g. a validation token beyond its length limit)."""


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


@dataclass(frozen=True)
class Credentials:
    """What verifies one connection's webhooks: its org, provider, config and secrets."""

    connection_id: str
    org_id: str
    provider: str
    status: str
    config: dict
    webhook_secrets: list[str] = field(default_factory=list)
    client_states: list[str] = field(default_factory=list)
    public_keys: list[str] = field(default_factory=list)

    def first_secret(self) -> str:
        """The newest webhook secret (what ``webhooks send`` signs with); ValueError if there is none."""
        if not self.webhook_secrets:
            raise ValueError("the connection has no webhook_secrets")
        return self.webhook_secrets[0]


@dataclass(frozen=True)
class Delivery:
    """One inbound request: raw body, lower-case headers, query parameters, method and public URL.

    ``url`` is only filled in for schemes whose signature covers it (``WebhookScheme.needs_url``).
    """

    body: bytes
    headers: dict[str, str]
    query: dict[str, str]
    method: str
    url: str


@dataclass(frozen=True)
class Reply:
    """A handshake's answer: text (``text/plain``) or a JSON object, with its status."""

    body: str | dict
    status: int = 200


class WebhookScheme:
    """One provider's webhook scheme; subclasses override what differs and register with ``@webhook_scheme``."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_url: ClassVar[bool] = False  # the signature covers the endpoint's public URL
    ack_status: ClassVar[int] = 200
    ack_counts: ClassVar[bool] = True  # acknowledge with {"accepted": n, "duplicates": m}; else an empty body
    public_key_name: ClassVar[str | None] = None  # config key and secret holding PEM public keys (``public_keys``)

    def challenge(self, query: dict[str, str]) -> Reply | None:
        """The answer to a handshake made before any signature (from the query), else None."""
        return None

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Raise ``SignatureError`` unless the delivery is authentic for this connection."""
        raise NotImplementedError

    def handshake(self, body: bytes, headers: Mapping[str, str]) -> Reply | None:
        """The answer to a (verified) handshake request, else None."""
        return None

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """The events in one verified delivery (``headers`` with lower-case keys); MalformedEvent if unreadable."""
        raise NotImplementedError

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """The domain events of one stored event, or ``Mapped(ignored=reason)``."""
        return Mapped(ignored=f"{self.name} events are recorded but not mapped to domain events")

    def follow_up(self, event: DomainEvent) -> str | None:
        """The provider work a mapped event asks for before it is signalled, if any: one of the ``FollowUp``
        kinds ``WebhookEventWorkflow`` does (activities/webhook_types.py, checked when the relay builds its input)."""
        return None

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers the provider would send for ``body`` to ``url`` (``webhooks send``, tests)."""
        raise ValueError(f"no signer for scheme {self.name!r}")

    def new_id(self, doc: dict, fresh: str) -> None:
        """Give the JSON event ``doc`` a fresh event id built from ``fresh`` (``webhooks send --new-id``)."""
        raise ValueError(f"--new-id is not supported for {self.name} payloads")

    def secret_errors(self, secrets: list[str]) -> list[str]:
        """Problems with webhook secrets given at connection time that would fail every delivery."""
        return []


SCHEMES: dict[str, WebhookScheme] = {}
"""Registered schemes by name (what a catalogue entry's ``webhook.signing`` says)."""

S = TypeVar("S", bound=type[WebhookScheme])
_by_provider: dict[str, WebhookScheme] | None = None


def webhook_scheme(cls: S) -> S:
    """Register a ``WebhookScheme`` subclass under its ``name`` (class decorator, used by provider modules)."""
    existing = SCHEMES.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"webhook scheme {cls.name!r} is registered twice "
                         f"({type(existing).__module__}, {cls.__module__})")
    SCHEMES[cls.name] = cls()
    reset()
    return cls


def _provider_table() -> dict[str, WebhookScheme]:
    """Provider key → scheme, from the catalogue's ``webhook.signing`` (provider modules imported first)."""
    global _by_provider
    import_action_modules()
    table = {}
    for entry in catalogue().providers.values():
        if entry.webhook is None:
            continue
        scheme = SCHEMES.get(entry.webhook.signing)
        if scheme is None:
            raise LookupError(f"provider {entry.key} names webhook scheme {entry.webhook.signing!r}, "
                              f"which no module registers (registered: {', '.join(sorted(SCHEMES))})")
        table[entry.key] = scheme
    if HUB_PROVIDER in SCHEMES:  # the events the hub raises itself are in the scheme of that name
        table.setdefault(HUB_PROVIDER, SCHEMES[HUB_PROVIDER])
    _by_provider = table
    return table


def for_provider(provider: str) -> WebhookScheme | None:
    """The webhook scheme of a provider (None if it sends no webhooks): one dict get once built."""
    return (_by_provider if _by_provider is not None else _provider_table()).get(provider)


def reset() -> None:
    """Forget the provider table (after the catalogue changed); it is rebuilt on next use."""
    global _by_provider
    _by_provider = None


def scheme_for(provider: str) -> str | None:
    """The name of a provider's webhook scheme, or None if it sends none."""
    scheme = for_provider(provider)
    return None if scheme is None else scheme.name


def get(name: str) -> WebhookScheme:
    """A registered scheme by name; LookupError naming the registered ones if absent."""
    if name not in SCHEMES:
        import_action_modules()
    try:
        return SCHEMES[name]
    except KeyError:
        raise LookupError(f"no webhook scheme {name!r} (registered: {', '.join(sorted(SCHEMES))})") from None


def split_delivery(scheme: str, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
    """The events in one verified delivery in ``scheme``'s format (``headers`` with lower-case keys)."""
    return get(scheme).split(body, headers)


def map_event(scheme: str, event_type: str, body: bytes, content_type: str) -> Mapped:
    """The domain events of one stored event in ``scheme``'s format, or ``Mapped(ignored=reason)``."""
    return get(scheme).map(event_type, body, content_type)


def map_stored(provider: str, event_type: str, body: bytes, content_type: str) -> tuple[WebhookScheme, Mapped]:
    """A stored inbox event mapped by its provider's scheme (the relay, the dry-run and the backtest alike):
    the scheme and the domain events; ``MalformedEvent`` if it cannot be mapped."""
    scheme = for_provider(provider)
    if scheme is None:
        raise MalformedEvent(f"provider {provider!r} has no webhook scheme")
    return scheme, scheme.map(event_type, body, content_type)


def trigger_names(provider: str, event_type: str, mapping: Mapped) -> set[str]:
    """The names a rule's ``on`` may use for this event: ``provider.type`` and each domain type."""
    return {f"{provider}.{event_type}", *(e.type for e in mapping.events)}


# --- helpers for the schemes -------------------------------------------------------------------------------


def digest(data: bytes) -> str:
    """A short content hash: the event id of deliveries that carry none."""
    return hashlib.sha256(data).hexdigest()[:40]


def parse_json(body: bytes) -> object:
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


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


def dump(obj: object) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

