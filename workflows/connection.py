"""ConnectionWorkflow: one per connection (id ``connection/{org}/{id}``), the single place tokens are refreshed.

- Refreshes ahead of expiry (and at least every ``refresh.max_interval`` where refresh tokens rotate),
  on a durable timer.
- Update ``fresh_token(seen_version)``: an activity whose token was rejected (401) or is about to expire
  asks for a token newer than the one it holds. Callers are serialised by a lock and a caller whose
  version is already outdated gets the current one without a refresh, so any number of concurrent
  callers on an expired token cause exactly one token-endpoint call.
- The workflow only ever sees token *versions* and times; tokens stay in the database (the
  ``connection.refresh`` activity stores them before it returns).
- A refusal that only re-authorisation can fix (``invalid_grant`` & co), or ``MAX_FAILURES`` failed
  rounds in a row, marks the connection ``needs_reauth`` (audited), runs the org's rules for the
  ``connection.failed`` event, and ends the workflow; a new authorisation starts it again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.connections import ConnectionActivities
    from activities.connector_types import (
        CONNECTION_FAILED_EVENT,
        CONNECTION_WORKFLOW,
        ERR_GONE,
        ERR_REAUTH,
        ERR_RETRY_LATER,
        ERR_TOKEN_REFUSED,
        FRESH_TOKEN_UPDATE,
        STOP_SIGNAL,
        TOKENS_STORED_SIGNAL,
        ConnectionRef,
        FailureInput,
        RefreshInput,
        TokenRequest,
        TokenState,
    )
    from workflows.rule_runner import RuleRunner

MAX_FAILURES = 5
FAILURE_BACKOFF = (timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(minutes=30))
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
REFRESH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=4,
    non_retryable_error_types=[ERR_REAUTH, ERR_TOKEN_REFUSED, ERR_GONE],
)


def _reason(exc: BaseException) -> tuple[str | None, str]:
    """(error type, message) of the innermost cause of an activity failure."""
    while isinstance(exc, ActivityError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, ApplicationError):
        return exc.type, exc.message
    return None, str(exc)


@workflow.defn(name=CONNECTION_WORKFLOW)
class ConnectionWorkflow:
    """Keeps one connection's access token valid; serialises every refresh."""

    @workflow.init
    def __init__(self, ref: ConnectionRef) -> None:
        self.ref = ref
        self.state: TokenState | None = None
        self.lock = asyncio.Lock()
        self.failures = 0
        self.retry_not_before = None
        self.last_failure = ""
        self.stopping = False
        self.wake = False
        self.failed_event: dict | None = None
        self.reload = False

    @workflow.run
    async def run(self, ref: ConnectionRef) -> str:
        """Sleep until the next refresh is due (or something wakes us), refresh, repeat."""
        self.state = await self._load()
        while True:
            state = self.state
            if self.stopping or not state.exists or state.status == "needs_reauth":
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self.failed_event:
                    wid = workflow.info().workflow_id
                    await RuleRunner(self.ref.org_id, wid).run(
                        [self.failed_event], key_prefix=f"{wid}/{CONNECTION_FAILED_EVENT}/{state.version}"
                    )
                return "needs_reauth" if state.status == "needs_reauth" else "stopped"
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(ref)
            if self.reload:
                async with self.lock:
                    self.reload, self.failures, self.retry_not_before = False, 0, None
                    self.state = await self._load()
                continue
            due = self.retry_not_before or (state.next_refresh_at if state.refreshes else None)
            self.wake = False
            timeout = None if due is None else max((due - workflow.now()).total_seconds(), 0.0)
            try:
                await workflow.wait_condition(lambda: self.wake or self.stopping, timeout=timeout)
            except TimeoutError:
                try:
                    await self._refresh(state.version)
                except ApplicationError:
                    pass  # recorded in self.failures / the connection's last_error; the loop decides what next

    @workflow.update(name=FRESH_TOKEN_UPDATE)
    async def fresh_token(self, request: TokenRequest) -> TokenState:
        """A token state newer than ``request.seen_version`` (refreshing at most once for all callers)."""
        await workflow.wait_condition(lambda: self.state is not None)
        try:
            return await self._refresh(request.seen_version)
        finally:
            self.wake = True

    @fresh_token.validator
    def _validate_fresh_token(self, request: TokenRequest) -> None:
        if self.state is not None and self.state.status == "needs_reauth":
            raise ApplicationError("the connection needs re-authorisation", type=ERR_REAUTH)
        if self.stopping or (self.state is not None and not self.state.exists):
            raise ApplicationError("the connection was deleted", type=ERR_REAUTH)

    @workflow.signal(name=TOKENS_STORED_SIGNAL)
    def tokens_stored(self) -> None:
        """New tokens were stored outside the workflow (a new authorisation): reload, forget failures."""
        self.reload = True
        self.wake = True

    @workflow.signal(name=STOP_SIGNAL)
    def stop(self) -> None:
        """The connection was deleted: finish."""
        self.stopping = True

    @workflow.query
    def status(self) -> TokenState | None:
        """The token state the workflow holds (versions and times only)."""
        return self.state

    async def _load(self) -> TokenState:
        return await workflow.execute_activity_method(
            ConnectionActivities.state, self.ref,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=STORE_RETRY,
        )

    async def _refresh(self, seen_version: int) -> TokenState:
        """The one refresh path (timer and Update alike), under the lock."""
        async with self.lock:
            if seen_version > self.state.version:  # the caller knows a newer version: we are behind the store
                self.state = await self._load()
            if self.state.version > seen_version and self.state.status == "active":
                return self.state  # type: ignore[return-value]  # loaded: the version check above read it
            if self.state.status == "needs_reauth" or not self.state.exists:
                raise ApplicationError(f"the connection needs re-authorisation: {self.last_failure}".rstrip(": "),
                                       type=ERR_REAUTH)
            if self.retry_not_before is not None and workflow.now() < self.retry_not_before:
                raise ApplicationError(f"token endpoint failing, next attempt after {self.retry_not_before}: "
                                       f"{self.last_failure}", type=ERR_RETRY_LATER)
            try:
                state = await workflow.execute_activity_method(
                    ConnectionActivities.refresh,
                    RefreshInput(org_id=self.ref.org_id, connection_id=self.ref.connection_id,
                                 from_version=self.state.version),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=REFRESH_RETRY,
                )
            except ActivityError as exc:
                kind, message = _reason(exc)
                self.failures += 1
                self.last_failure = message
                if kind == ERR_GONE:
                    self.state = TokenState(status="missing", exists=False, refreshes=False)
                    raise ApplicationError("the connection was deleted", type=ERR_REAUTH) from None
                if kind == ERR_REAUTH or self.failures >= MAX_FAILURES:
                    await self._fail(message)
                    raise ApplicationError(f"the connection needs re-authorisation: {message}",
                                           type=ERR_REAUTH) from None
                backoff = FAILURE_BACKOFF[min(self.failures, len(FAILURE_BACKOFF)) - 1]
                self.retry_not_before = workflow.now() + backoff
                raise ApplicationError(f"token refresh failed: {message}", type=ERR_RETRY_LATER) from None
            self.state = state
            self.failures, self.retry_not_before, self.last_failure = 0, None, ""
            return state

    async def _fail(self, reason: str) -> None:
        """needs_reauth + audit (activity); the run loop then routes the ``connection.failed`` event through rules."""
        event = await workflow.execute_activity_method(
            ConnectionActivities.mark_failed,
            FailureInput(org_id=self.ref.org_id, connection_id=self.ref.connection_id, reason=reason),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        self.state = TokenState(
            status="needs_reauth", version=self.state.version, expires_at=self.state.expires_at,
            refreshes=self.state.refreshes,
        )
        self.failed_event = event or None  # routed by the run loop, so Update callers never wait for rules
