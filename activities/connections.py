"""Connector and connection activities: run a provider action; load, refresh and fail a connection.

``connector.run_action`` runs on the provider's rate-limited task queue; the ``connection.*``
activities run on the main queue for the ConnectionWorkflow, which is the only caller of
``connection.refresh`` — the one place a token endpoint is called after a connection is authorised.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

import httpx
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities import connection_lifecycle
from activities.budgets import Budgets, budget_key
from activities.connector_types import (
    ACTION_HEARTBEAT,
    BULK_PRIORITY,
    CONNECTION_FAILED,
    CONNECTION_FAILED_EVENT,
    CONNECTION_REFRESH,
    CONNECTION_STATE,
    CONNECTION_WORKFLOW,
    ERR_BAD_PARAMS,
    ERR_CONNECTION,
    ERR_DESTINATION,
    ERR_GONE,
    ERR_PROVIDER,
    ERR_RATE_LIMITED,
    ERR_REAUTH,
    ERR_TOKEN_ENDPOINT,
    ERR_TOKEN_REFUSED,
    ERR_UNAUTHORIZED,
    ERR_UNAVAILABLE,
    FRESH_TOKEN_UPDATE,
    RUN_ACTION,
    ActionCall,
    ActionResult,
    ConnectionRef,
    FailureInput,
    RefreshInput,
    TokenRequest,
    TokenState,
    connection_workflow_id,
)
from connectors.base import ACTIONS, REQUEST_GATE, ActionContext, ProviderError, provider_http_client
from connectors.catalogue import Provider, RateLimit, catalogue, import_action_modules
from connectors.oauth import ClientAuth, TokenEndpointError, next_refresh_at, obtain_token, refresh_lead
from hub import temporal as hub_temporal
from hub.egress import DestinationRefused
from hub.runtime import Hub
from hub.single_flight import single_flight
from hub.store.base import utcnow
from hub.store.connections import Connection
from hub.store.oauth import load_secrets, store_tokens
from hub.store.orgs import record_audit

log = logging.getLogger("activities.connections")
T = TypeVar("T")
WEIGHT_RETRY = 5.0  # seconds before a process asks the server again for a fairness weight it refused

SECRETS_TTL = 60.0  # seconds a connection's decrypted secrets are reused while its token version holds
CONNECTION_TTL = 5.0  # seconds provider calls reuse a connection's row (status and config changes apply within)
STORE_ATTEMPTS = 5
UPDATE_ATTEMPTS = 6

CONNECTION_FAILURES = Counter(
    "hub_connection_failures_total", "Connections marked needs_reauth", ["provider"]
)


def token_state(conn: Connection | None, provider: Provider | None = None) -> TokenState:
    """What a workflow may know of a connection's tokens (no secrets)."""
    if conn is None or conn.status == "disabled":
        return TokenState(status="missing", exists=False, refreshes=False)
    entry = provider or catalogue().get(conn.provider)
    return TokenState(
        status=conn.status, version=conn.token_version, expires_at=conn.access_expires_at,
        next_refresh_at=conn.next_refresh_at, refreshes=entry.refreshes,
    )


def connection_failed_event(conn: Connection, reason: str) -> dict:
    """The ``connection.failed`` domain event, in the shape rules evaluate (``event.*`` in CEL and templates)."""
    return {
        "type": CONNECTION_FAILED_EVENT,
        "org": conn.org_id,
        "opp": {},
        "event": {
            "connection_id": conn.id, "provider": conn.provider, "name": conn.name,
            "status": "needs_reauth", "reason": reason, "at": utcnow().isoformat(),
        },
    }


class _CachedConnection(NamedTuple):
    conn: Connection
    expires: float  # monotonic


class _CachedSecrets(NamedTuple):
    version: int
    expires: float  # monotonic
    load: asyncio.Future[dict[str, str]]


async def heartbeat_every(seconds: float, details: Callable[[], tuple] = tuple) -> None:
    """Heartbeat the running activity every ``seconds`` with ``details()``, while it waits (for a budget slot, a
    token, the provider): its worker is known to be alive. Run as a task, cancelled when the activity ends."""
    while True:
        await asyncio.sleep(seconds)
        activity.heartbeat(*details())


class _StoredTokens:
    """The TokenSource of one action run: tokens from the store; renewal only through the ConnectionWorkflow."""

    def __init__(self, owner: ConnectionActivities, conn: Connection, provider: Provider,
                 secrets: dict[str, str]) -> None:
        self._owner, self._conn, self._provider, self._secrets = owner, conn, provider, secrets
        self.version = conn.token_version
        self.expires_at = conn.access_expires_at
        self.skew = _expiry_skew(conn)
        self.renewed = False

    async def access_token(self) -> str:
        mode = self._provider.auth_mode
        if mode == "api_key":
            return self._secrets["api_key"]
        if mode == "basic":
            raise RuntimeError("a basic-auth connection has no token: use ctx.auth_headers()")
        expiring = self.expires_at is not None and self.expires_at <= utcnow() + self.skew
        renewing = self._owner.renewing(self._conn.id, self.version)  # wait for it rather than meet a 401
        if "access_token" not in self._secrets or expiring or renewing:
            return await self.fresh_token()
        return self._secrets["access_token"]

    async def fresh_token(self) -> str:
        if not self._provider.refreshes:
            raise ApplicationError(f"{self._provider.key} credentials were rejected", type=ERR_UNAUTHORIZED,
                                   non_retryable=True)
        state = await self._owner.request_fresh_token(self._conn, self.version)
        self._secrets = await self._owner.secrets_of(self._conn.id, state.version)
        self.version, self.expires_at, self.renewed = state.version, state.expires_at, True
        return self._secrets["access_token"]

    def secret(self, name: str) -> str | None:
        return self._secrets.get(name)

    def outdated(self) -> bool:
        """Whether this process is renewing the token held here, or already has a newer one."""
        return self._provider.refreshes and (self._owner.renewing(self._conn.id, self.version)
                                             or self._owner.latest_version(self._conn.id) > self.version)

    async def current(self, request: httpx.Request | None) -> None:
        """Just before a request leaves: if this process is renewing the token it carries, wait for the new one,
        or if it already holds a newer one, take that; a plain HTTP request is sent with it (no 401 meets a
        refresh under way or just done; an SDK call, whose token is set, takes it on its re-run)."""
        if not self._provider.refreshes:
            return
        old = self._secrets.get("access_token")
        latest = self._owner.latest_version(self._conn.id)
        if self._owner.renewing(self._conn.id, self.version):
            await self.fresh_token()
        elif latest > self.version:
            self._secrets = await self._owner.secrets_of(self._conn.id, latest)
            self.version, self.renewed = latest, True
        new = self._secrets.get("access_token")
        if request is not None and old and new != old and request.headers.get("authorization") == f"Bearer {old}":
            request.headers["Authorization"] = f"Bearer {new}"


class ConnectionActivities:
    """Activities bound to the hub runtime (database, vault, settings) and one shared HTTP client.

    ``limits`` overrides providers' rate limits (by action prefix); the default is the catalogue's, and a
    connection's ``config.rate_limit`` overrides that. Every request a provider sees draws from its connection's
    budget (``budgets``, shared by all worker processes through the database) before it leaves.
    """

    def __init__(self, hub: Hub, limits: dict[str, RateLimit] | None = None) -> None:
        self.hub = hub
        self.budgets = Budgets(hub.db)
        self._http: httpx.AsyncClient | None = None
        self._limits = limits or {}
        self._weights: dict[tuple[str, str], float] = {}  # (task queue, fairness key) → weight set on the server
        self._weighing: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._weigh_after: dict[tuple[str, str], float] = {}  # → monotonic time before which a refused one waits
        self._renewals: dict[tuple[str, int], asyncio.Future[TokenState]] = {}
        self._latest: dict[str, int] = {}  # connection id → the newest token version this process was handed
        self._secret_cache: dict[str, _CachedSecrets] = {}
        self._conn_cache: dict[tuple[str, str, str | None], _CachedConnection] = {}
        import_action_modules()

    def limit(self, provider: Provider, conn: Connection | None = None) -> RateLimit:
        """The provider's rate limit (for ``conn``: its own ``config.rate_limit``, if it has one)."""
        limit = self._limits.get(provider.action_prefix) or provider.rate_limit
        own = (conn.config or {}).get("rate_limit") if conn is not None else None
        if not own:
            return limit
        try:
            return RateLimit.model_validate({**limit.model_dump(), **own})
        except ValidationError as exc:
            raise ApplicationError(f"connection {conn.id}: invalid config.rate_limit: {exc.errors()[0]['msg']}",
                                   type=ERR_CONNECTION, non_retryable=True) from None

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client handed to actions (created on first use, in the worker's event loop): through the
        egress policy (connection URLs are the tenant's), and every request it sends first passes the provider
        call's request gate (its draw from the connection's budget)."""
        if self._http is None:
            self._http = provider_http_client(self.hub.egress,
                                              timeout=httpx.Timeout(30, connect=10))
        return self._http

    def renewing(self, connection_id: str, version: int) -> bool:
        """Whether this process is already asking for a token newer than ``version`` of the connection."""
        return (connection_id, version) in self._renewals

    def latest_version(self, connection_id: str) -> int:
        """The newest token version of the connection this process was handed by its ConnectionWorkflow."""
        return self._latest.get(connection_id, 0)

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def lifecycle(self) -> list:
        """The activities of the main task queue (the ConnectionWorkflow's)."""
        return [self.state, self.refresh, self.mark_failed]

    async def secrets_of(self, connection_id: str, version: int) -> dict[str, str]:
        """A connection's secrets, decrypted, as of token version ``version`` or newer.

        Concurrent callers share one load, which is reused for ``SECRETS_TTL`` seconds: every token refresh
        bumps the version, so a rotated token is never served from the cache."""
        now = time.monotonic()
        cached = self._secret_cache.get(connection_id)
        if cached is None or cached.version < version or cached.expires <= now:
            self._secret_cache = {key: c for key, c in self._secret_cache.items() if c.expires > now}
            cached = self._secret_cache[connection_id] = _CachedSecrets(
                version, now + SECRETS_TTL, asyncio.ensure_future(self._load_secrets(connection_id)))
            cached.load.add_done_callback(lambda load: self._forget_failed(connection_id, load))
        return dict(await asyncio.shield(cached.load))

    async def usable_connection(self, org_id: str, provider: str, connection_id: str | None) -> Connection:
        """The connection a provider call runs on (``_usable_connection``), its row reused for ``CONNECTION_TTL``
        seconds — not past a token refresh in this process, which moves its token version on."""
        key = (org_id, provider, connection_id)
        now = time.monotonic()
        cached = self._conn_cache.get(key)
        if cached is not None and cached.expires > now:
            return cached.conn
        async with self.hub.db.sessions() as session:  # read only: no transaction to commit
            conn = await _usable_connection(session, org_id, provider, connection_id)
        self._conn_cache = {k: c for k, c in self._conn_cache.items() if c.expires > now}
        self._conn_cache[key] = _CachedConnection(conn, now + CONNECTION_TTL)
        return conn

    async def _load_secrets(self, connection_id: str) -> dict[str, str]:
        async with self.hub.db.session() as session:
            return await load_secrets(session, self.hub.vault, connection_id)

    def _forget_failed(self, connection_id: str, load: asyncio.Future) -> None:
        cached = self._secret_cache.get(connection_id)
        if (load.cancelled() or load.exception() is not None) and cached is not None and cached.load is load:
            del self._secret_cache[connection_id]

    # --- connector.run_action -------------------------------------------------------------------
    @activity.defn(name=RUN_ACTION)
    async def run_action(self, call: ActionCall) -> ActionResult:
        """Run one provider action with its connection's credentials; map provider failures to retries."""
        spec = ACTIONS.get(call.action)
        if spec is None:
            raise ApplicationError(f"unknown action {call.action!r}", type=ERR_BAD_PARAMS, non_retryable=True)
        try:
            params = spec.params.model_validate(call.params)
        except ValidationError as exc:
            raise ApplicationError(f"invalid params for {call.action}: {exc}", type=ERR_BAD_PARAMS,
                                   non_retryable=True) from None
        beats = asyncio.create_task(heartbeat_every(ACTION_HEARTBEAT.total_seconds() / 4))
        try:
            output, connection_id = await self.call_provider(
                catalogue().for_action(call.action), call.org_id, call.connection_id, call.idempotency_key,
                lambda ctx: spec.fn(ctx, params),
            )
        finally:
            beats.cancel()
        return ActionResult(ok=True, output=output, connection_id=connection_id)

    async def call_provider(
        self, provider: Provider, org_id: str, connection_id: str | None, idempotency_key: str,
        fn: Callable[[ActionContext], Awaitable[T]],
    ) -> tuple[T, str]:
        """Run ``fn`` against a provider exactly as an action runs (from an activity): on the given (or the
        org's single active) connection, every request it makes drawn from the connection's budget (as
        interactive or bulk work, from the task's priority), re-run once after a 401 with a fresh token from
        the ConnectionWorkflow, failures mapped by ``provider_failure``. Returns (result, connection id). An
        empty ``idempotency_key`` is derived from the workflow and activity ids."""
        conn = await self.usable_connection(org_id, provider.key, connection_id)
        limit = self.limit(provider, conn)
        info = activity.info()
        await self._weigh(info, provider, limit)
        key = budget_key(provider, limit, conn.id)
        interactive = (info.priority.priority_key or 0) < BULK_PRIORITY
        tokens = _StoredTokens(self, conn, provider, await self.secrets_of(conn.id, conn.token_version))

        async def gate(request: httpx.Request | None = None) -> None:
            while True:  # the token first: waiting for a refresh after its slot would bunch requests up
                await tokens.current(request)
                slot = await self.budgets.draw(key, limit, interactive=interactive, provider=provider.key)
                if not tokens.outdated():  # else a refresh began while it waited: its slot is spent unused
                    break
            if request is not None:  # ctx.http: checked again once its connection is open (see sending_hook)
                request.extensions["trace"] = self.budgets.sending_hook(key, limit, slot, interactive=interactive,
                                                                        provider=provider.key)

        passing = REQUEST_GATE.set(gate)
        try:
            return await self._call(provider, conn, tokens, idempotency_key, fn)
        finally:
            REQUEST_GATE.reset(passing)

    async def _call(self, provider: Provider, conn: Connection, tokens: _StoredTokens, idempotency_key: str,
                    fn: Callable[[ActionContext], Awaitable[T]]) -> tuple[T, str]:
        info = activity.info()
        ctx = ActionContext(
            connection_id=conn.id, org_id=conn.org_id, provider=provider.key, config=dict(conn.config),
            base_url=provider.endpoints(conn.config).base_url,
            idempotency_key=idempotency_key or f"{info.workflow_id or 'activity'}/{info.activity_id}",
            http=self.http, tokens=tokens, egress=self.hub.egress,
        )
        try:  # a refused base_url fails at once and for good; the guarded clients refuse any later hop too
            await self.hub.egress.admit(ctx.base_url)
        except DestinationRefused as exc:
            raise ApplicationError(f"{provider.key} base_url refused: {exc}", type=ERR_DESTINATION,
                                   non_retryable=True) from None
        for attempt in (1, 2):
            version = tokens.version
            try:
                return await fn(ctx), conn.id
            except (ProviderError, httpx.HTTPStatusError) as exc:
                err = exc if isinstance(exc, ProviderError) else ProviderError.from_response(exc.response)
                if err.status == 401 and attempt == 1 and provider.refreshes and (
                        tokens.version > version or not tokens.renewed):
                    if tokens.version == version:  # else renewed while this attempt ran: the newer token now
                        await tokens.fresh_token()
                    continue
                raise provider_failure(provider, err) from None
            except httpx.TransportError as exc:
                raise ApplicationError(f"{provider.key} unreachable: {type(exc).__name__}",
                                       type=ERR_UNAVAILABLE) from None
            except DestinationRefused as exc:
                raise ApplicationError(f"{provider.key} request refused: {exc}", type=ERR_DESTINATION,
                                       non_retryable=True) from None
        raise AssertionError("unreachable")

    async def _weigh(self, info: activity.Info, provider: Provider, limit: RateLimit) -> None:
        """A connection whose own limit differs from its provider's gets a matching fairness weight on the
        provider's task queue (the server's per-key rate is the provider's, scaled by the key's weight): set once
        per process, however many of its tasks start together (the server rate-limits configuration updates)."""
        fairness_key = info.priority.fairness_key
        weight = round(limit.per_second / self.limit(provider).per_second, 4)  # over the queue's per-key rate
        slot = (info.task_queue, fairness_key)
        if not fairness_key or self._weights.get(slot, 1.0) == weight or time.monotonic() < self._weigh_after.get(
                slot, 0.0):
            return
        await single_flight(self._weighing, slot, lambda: self._set_weight(slot, weight))

    async def _set_weight(self, slot: tuple[str, str], weight: float) -> None:
        """Set one fairness key's weight on the server. A refusal (its rate limit on configuration updates, say)
        does not fail the action: its requests still draw from the connection's budget, which holds the limit;
        this process tries again with a task that starts ``WEIGHT_RETRY`` seconds later."""
        queue, fairness_key = slot
        try:
            await hub_temporal.configure_fairness(activity.client(), queue, weights={fairness_key: weight})
        except RPCError as exc:
            log.warning("fairness weight of %s on %s not set (%s); retried in %g s", fairness_key, queue,
                        exc.message, WEIGHT_RETRY)
            self._weigh_after[slot] = time.monotonic() + WEIGHT_RETRY
            return
        self._weights[slot] = weight

    async def request_fresh_token(self, conn: Connection, seen_version: int) -> TokenState:
        """A token state newer than ``seen_version``. Concurrent callers in this process share one request
        to the connection's workflow, which serialises the requests of every process: one refresh."""
        state = await single_flight(self._renewals, (conn.id, seen_version),
                                    lambda: self._ask_workflow(conn, seen_version))
        self._latest[conn.id] = max(self._latest.get(conn.id, 0), state.version)
        self._conn_cache = {k: c for k, c in self._conn_cache.items()
                            if c.conn.id != conn.id or c.conn.token_version >= state.version}
        return state

    async def _ask_workflow(self, conn: Connection, seen_version: int) -> TokenState:
        """Update ``fresh_token`` on the connection's workflow, starting the workflow if needed.

        The server aborts or refuses updates when a workflow has too many in flight; those are retried
        here, briefly, rather than by re-running the whole action."""
        client = activity.client()
        ref = ConnectionRef(org_id=conn.org_id, connection_id=conn.id)
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            try:
                return await client.execute_update_with_start_workflow(
                    FRESH_TOKEN_UPDATE,
                    TokenRequest(seen_version=seen_version),
                    start_workflow_operation=WithStartWorkflowOperation(
                        CONNECTION_WORKFLOW, ref, id=connection_workflow_id(conn.org_id, conn.id),
                        task_queue=self.hub.settings.task_queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    ),
                    result_type=TokenState,
                )
            except WorkflowUpdateFailedError as exc:
                cause = exc.cause
                reason = getattr(cause, "message", None) or "token refresh failed"
                if isinstance(cause, ApplicationError) and cause.type == ERR_REAUTH:
                    raise ApplicationError(f"connection {conn.id} needs re-authorisation: {reason}",
                                           type=ERR_CONNECTION, non_retryable=True) from None
                raise ApplicationError(f"token refresh for {conn.id} failed: {reason}",
                                       type=ERR_UNAVAILABLE) from None
            except RPCError as exc:
                transient = exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.RESOURCE_EXHAUSTED)
                if not transient or attempt == UPDATE_ATTEMPTS:
                    raise ApplicationError(f"Temporal refused the token refresh request: {exc.status.name}",
                                           type=ERR_UNAVAILABLE) from None
                activity.heartbeat()
                await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    # --- the ConnectionWorkflow's activities -----------------------------------------------------
    @activity.defn(name=CONNECTION_STATE)
    async def state(self, ref: ConnectionRef) -> TokenState:
        """The connection's token state, or ``exists=False`` if it was deleted."""
        async with self.hub.db.session() as session:
            return token_state(await _connection(session, ref.org_id, ref.connection_id))

    @activity.defn(name=CONNECTION_REFRESH)
    async def refresh(self, inp: RefreshInput) -> TokenState:
        """Obtain a new token for version ``from_version`` and store it before returning.

        Idempotent: if the stored version is already newer (an earlier attempt stored it and then died
        before reporting), nothing is called. The tokens exist only in this coroutine between the token
        endpoint's answer and the database commit, and the commit is retried in place, so a failing
        write never loses a rotated refresh token to an activity retry.
        """
        async with self.hub.db.session() as session:
            conn = await _connection(session, inp.org_id, inp.connection_id)
            if conn is None or conn.status == "disabled":
                raise ApplicationError(f"connection {inp.connection_id} no longer exists", type=ERR_GONE,
                                       non_retryable=True)
            if conn.token_version > inp.from_version:
                return token_state(conn)
            was_active = conn.status == "active"
            interrupted = conn.refresh_pending_since is not None
            conn.refresh_pending_since = conn.refresh_pending_since or utcnow()
            secrets = await load_secrets(session, self.hub.vault, conn.id)
        provider = catalogue().get(conn.provider)
        try:
            auth = ClientAuth.for_connection(conn.config, secrets, self.hub.egress)
            tokens = await obtain_token(provider, provider.endpoints(conn.config), auth)
        except TokenEndpointError as exc:
            message = str(exc)
            if exc.reauth and interrupted:
                message += " (an earlier refresh was interrupted after the provider may have rotated the token)"
            await self._note_error(conn.id, message)
            if exc.reauth:
                raise ApplicationError(message, type=ERR_REAUTH, non_retryable=True) from None
            raise ApplicationError(message, type=ERR_TOKEN_ENDPOINT if exc.retryable else ERR_TOKEN_REFUSED,
                                   non_retryable=not exc.retryable) from None
        due = next_refresh_at(provider, tokens.expires_at, utcnow(),
                              bool(tokens.refresh_token or secrets.get("refresh_token")))
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                async with self.hub.db.session() as session:
                    conn = await session.get(Connection, inp.connection_id)
                    stored = await store_tokens(
                        session, self.hub.vault, conn, from_version=inp.from_version,
                        access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                        expires_at=tokens.expires_at, next_refresh_at=due,
                    )
                break
            except SQLAlchemyError as exc:
                if attempt == STORE_ATTEMPTS:
                    raise ApplicationError(f"could not store refreshed tokens: {type(exc).__name__}",
                                           type=ERR_TOKEN_ENDPOINT) from None
                activity.heartbeat(attempt)
                await asyncio.sleep(0.5 * 2**attempt)
        if stored and not was_active:  # usable from now on: its sync and subscription schedules run now
            await connection_lifecycle.activated(self.hub, conn, adopt_tokens=False)
        return token_state(conn, provider)

    @activity.defn(name=CONNECTION_FAILED)
    async def mark_failed(self, inp: FailureInput) -> dict:
        """Mark the connection ``needs_reauth``, audit it and return the ``connection.failed`` event."""
        async with self.hub.db.session() as session:
            conn = await _connection(session, inp.org_id, inp.connection_id)
            if conn is None:
                return {}
            conn.status, conn.last_error, conn.next_refresh_at = "needs_reauth", inp.reason, None
            conn.refresh_pending_since = None
            event = connection_failed_event(conn, inp.reason)
            await record_audit(session, conn.org_id, "connection-workflow", CONNECTION_FAILED_EVENT,
                               f"connection/{conn.id}", event)
        CONNECTION_FAILURES.labels(conn.provider).inc()
        log.warning("connection %s (%s) needs re-authorisation: %s", conn.id, conn.provider, inp.reason)
        return event

    async def _note_error(self, connection_id: str, message: str) -> None:
        async with self.hub.db.session() as session:
            conn = await session.get(Connection, connection_id)
            if conn is not None:
                conn.last_error = message


async def _connection(session, org_id: str, connection_id: str) -> Connection | None:  # noqa: ANN001
    conn = await session.get(Connection, connection_id)
    return conn if conn is not None and conn.org_id == org_id else None


async def _usable_connection(session, org_id: str, provider: str, connection_id: str | None) -> Connection:  # noqa: ANN001
    """The connection an action runs on: the given one, or the org's single active one of the provider."""
    if connection_id:
        conn = await _connection(session, org_id, connection_id)
        if conn is None or conn.provider != provider or conn.status == "disabled":
            raise ApplicationError(f"no {provider} connection {connection_id!r} in org {org_id}",
                                   type=ERR_CONNECTION, non_retryable=True)
    else:
        found = (await session.scalars(
            select(Connection).where(Connection.org_id == org_id, Connection.provider == provider,
                                     Connection.status == "active").limit(2)
        )).all()
        if len(found) != 1:
            what = "no active" if not found else "more than one active"
            raise ApplicationError(f"{what} {provider} connection in org {org_id}; name one with connection_id",
                                   type=ERR_CONNECTION, non_retryable=True)
        conn = found[0]
    if conn.status != "active":
        raise ApplicationError(f"connection {conn.id} is {conn.status}", type=ERR_CONNECTION, non_retryable=True)
    return conn


def _expiry_skew(conn: Connection) -> timedelta:
    """How long before its expiry a caller treats the access token as expired and asks for a newer one: half
    the refresh lead of its lifetime, so the ConnectionWorkflow's own refresh (a full lead early) comes first."""
    expires, issued = conn.access_expires_at, conn.last_refresh_at
    lifetime = expires - issued if expires is not None and issued is not None and expires > issued else None
    return refresh_lead(lifetime) / 2


def retry_delay(provider: Provider, headers: dict[str, str], now: datetime | None = None) -> timedelta | None:
    """The wait the provider asked for, from its retry header (seconds, epoch seconds or an HTTP date)."""
    raw = headers.get(provider.retry.header.lower())
    if not raw:
        return None
    now = now or datetime.now(UTC)
    try:
        if provider.retry.format == "seconds":
            seconds = float(raw)
        elif provider.retry.format == "epoch":
            seconds = float(raw) - now.timestamp()
        else:
            seconds = (email.utils.parsedate_to_datetime(raw) - now).total_seconds()
    except (ValueError, TypeError):
        return None
    return timedelta(seconds=max(seconds, 0.0))


def provider_failure(provider: Provider, err: ProviderError) -> ApplicationError:
    """Temporal's view of a provider error: 429 → retry after the provider's delay; 401 → not retryable;
    408 and 5xx → retried with backoff; other 4xx → not retryable, carrying the provider's message."""
    what = f"{provider.key} answered {err.status}: {err.message}"
    details = {"status": err.status, "code": err.code}
    if err.status == 429 or err.status >= 500:
        delay = retry_delay(provider, err.headers)
        kind = ERR_RATE_LIMITED if err.status == 429 else ERR_UNAVAILABLE
        return ApplicationError(what, details, type=kind, next_retry_delay=delay)
    if err.status == 408:
        return ApplicationError(what, details, type=ERR_UNAVAILABLE)
    if err.status == 401:
        return ApplicationError(what, details, type=ERR_UNAUTHORIZED, non_retryable=True)
    return ApplicationError(what, details, type=ERR_PROVIDER, non_retryable=True)
