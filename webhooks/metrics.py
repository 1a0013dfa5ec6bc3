"""Prometheus metrics of webhook intake and relay (exposed on the API's ``/metrics``)."""

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("hub_webhooks_received_total", "Webhook requests received", ["provider"])
VERIFIED = Counter("hub_webhooks_verified_total", "Webhook requests whose signature verified", ["provider"])
REJECTED = Counter(
    "hub_webhooks_rejected_total", "Webhook requests rejected, by reason", ["provider", "reason"]
)
ACCEPTED = Counter("hub_webhooks_accepted_total", "Events committed to the inbox", ["provider"])
DUPLICATES = Counter("hub_webhooks_duplicates_total", "Events already in the inbox (re-deliveries)", ["provider"])
RELAYED = Counter(
    "hub_webhooks_relayed_total", "Inbox events handed on by the relay", ["provider", "outcome"]
)
RELAY_LAG = Histogram(
    "hub_webhooks_relay_lag_seconds",
    "Time from receipt to relay (workflow started or finished without one)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
OLDEST_PENDING = Gauge(
    "hub_webhooks_oldest_pending_seconds", "Age of the oldest inbox event waiting for the relay"
)


@dataclass(frozen=True)
class ProviderCounters:
    """One provider's intake counters, their labels resolved once."""

    received: Counter
    verified: Counter
    accepted: Counter
    duplicates: Counter


@cache
def for_provider(provider: str) -> ProviderCounters:
    """The intake counters of a provider with webhooks (a bounded set: never a name taken from a request)."""
    return ProviderCounters(
        RECEIVED.labels(provider), VERIFIED.labels(provider), ACCEPTED.labels(provider), DUPLICATES.labels(provider)
    )
