"""Names and payload types shared by workflows and the connector/connection activities.

Pure (pydantic + temporalio's common types only): safe to import inside the workflow sandbox. Nothing
here ever carries a token or a secret; workflows see token *versions* and expiry times only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio.common import Priority, RetryPolicy

# Activity names.
RUN_ACTION = "connector.run_action"
CONNECTION_STATE = "connection.state"
CONNECTION_REFRESH = "connection.refresh"
CONNECTION_FAILED = "connection.mark_failed"

# The ConnectionWorkflow: its type name, its Update (single place of refresh) and its signals.
CONNECTION_WORKFLOW = "ConnectionWorkflow"
FRESH_TOKEN_UPDATE = "fresh_token"
TOKENS_STORED_SIGNAL = "tokens_stored"
STOP_SIGNAL = "stop"

# The event emitted (audit log + returned to the workflow) when a connection needs re-authorisation.
CONNECTION_FAILED_EVENT = "connection.failed"

# ApplicationError types raised by connector.run_action.
ERR_RATE_LIMITED = "ProviderRateLimited"
ERR_PROVIDER = "ProviderError"
ERR_UNAVAILABLE = "ProviderUnavailable"
ERR_DESTINATION = "DestinationRefused"  # the egress policy refused a connection URL
ERR_UNAUTHORIZED = "ProviderUnauthorized"
ERR_CONNECTION = "ConnectionUnavailable"
ERR_BAD_PARAMS = "InvalidActionParams"
NON_RETRYABLE_ERRORS = [ERR_PROVIDER, ERR_UNAUTHORIZED, ERR_CONNECTION, ERR_BAD_PARAMS]

# ApplicationError types of connection.refresh and of the fresh_token Update.
ERR_REAUTH = "ReauthRequired"  # only a new authorisation helps (invalid_grant & co)
ERR_TOKEN_ENDPOINT = "TokenEndpointUnavailable"  # transient: retried
ERR_TOKEN_REFUSED = "TokenEndpointRefused"  # refused for another reason: not retried by the activity
ERR_GONE = "ConnectionGone"  # the connection was deleted
ERR_RETRY_LATER = "RefreshUnavailable"  # the Update's "token endpoint failing, try again later"

# Task priorities on a provider's queue (1 is served first): actions a transition or a webhook caused go before
# bulk sync pages of the same connection, on the server (priority_key) and in the request budget (a bulk request
# never reserves a slot ahead of an interactive one: activities/budgets.py).
INTERACTIVE_PRIORITY = 1
BULK_PRIORITY = 4

#: A running action reports to the server every quarter of this; silent this long (its worker died), it is retried
#: on another worker then instead of after its whole start-to-close timeout.
ACTION_HEARTBEAT = timedelta(seconds=20)
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)


def provider_of(action: str) -> str:
    """``slack.post_message`` → ``slack``."""
    return action.split(".", 1)[0]


def provider_task_queue(main_task_queue: str, provider: str) -> str:
    """The rate-limited task queue of one provider's activities."""
    return f"{main_task_queue}-{provider}"


def org_priority(org_id: str) -> Priority:
    """An org's work on a shared queue: its fairness key is the org, so the server hands each org's tasks out in
    turn with the others' (one org's backlog, e.g. a bulk import, does not hold up another's). A workflow's
    activities inherit it."""
    return Priority(fairness_key=f"org:{org_id}"[:64])


def provider_priority(org_id: str, connection_id: str | None, priority_key: int) -> Priority:
    """A provider task's priority: its fairness key is its connection (the server hands each key's tasks out at
    the provider's per-connection rate, fairly between keys), or its org when the task names no connection."""
    return Priority(priority_key=priority_key,
                    fairness_key=connection_id or org_priority(org_id).fairness_key)  # fmt: skip


def connection_workflow_id(org_id: str, connection_id: str) -> str:
    """``connection/{org}/{id}`` — ids only, never anything secret."""
    return f"connection/{org_id}/{connection_id}"


class ActionCall(BaseModel):
    """Run one provider action. No ``connection_id`` → the org's single active connection of that provider.

    ``idempotency_key`` is sent to providers that support one (Stripe); empty → derived from the calling
    workflow id and activity id, so a retried activity reuses it.
    """

    org_id: str
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    connection_id: str | None = None
    idempotency_key: str = ""


class ActionResult(BaseModel):
    """What an action returned. Failures are raised as ``ApplicationError`` (types above), so a returned
    result is a success: ``ok`` is True and ``error`` None; ``connection_id`` names the connection used."""

    ok: bool = True
    output: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    connection_id: str | None = None


class ConnectionRef(BaseModel):
    """Input of the ConnectionWorkflow and of its activities."""

    org_id: str
    connection_id: str


class TokenRequest(BaseModel):
    """Update ``fresh_token``: I hold token version ``seen_version`` (rejected or expiring); give me a newer one."""

    seen_version: int


class RefreshInput(BaseModel):
    """Activity ``connection.refresh``: replace token version ``from_version`` (no-op if already newer)."""

    org_id: str
    connection_id: str
    from_version: int


class TokenState(BaseModel):
    """A connection's token lifecycle as workflows see it: versions and times, never a token."""

    status: str
    version: int = 0
    expires_at: datetime | None = None
    next_refresh_at: datetime | None = None
    refreshes: bool = True  # False for api_key/basic: nothing to refresh
    exists: bool = True


class FailureInput(BaseModel):
    """Activity ``connection.mark_failed``: the connection needs re-authorisation because of ``reason``."""

    org_id: str
    connection_id: str
    reason: str
