"""``/v1/connections`` (connections and their status — never their secrets) and ``/oauth/{provider}/callback``.

Creating a connection stores its secrets encrypted and, by auth mode:
- ``oauth2_code_pkce``: answers an authorization URL (PKCE S256, a single-use ``state`` bound to the org
  and the connection, expiring after 10 minutes); the callback exchanges the code and starts the
  connection's ConnectionWorkflow.
- ``client_credentials`` / ``jwt_grant``: asks the ConnectionWorkflow for the first token at once
  (Update-with-start), so the connection is ``active`` in the response if the credentials work.
- ``api_key`` / ``basic``: ``active`` at once.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy

from activities import connection_lifecycle as lifecycle
from activities.connector_types import (
    ConnectionRef,
    TokenRequest,
    connection_workflow_id,
)
from activities.sync_schedules import connection_changed
from connectors.catalogue import Provider, RateLimit, catalogue
from connectors.events import for_provider
from connectors.oauth import (
    ClientAuth,
    TokenEndpointError,
    authorization_url,
    exchange_code,
    new_code_verifier,
)
from connectors.oauth import next_refresh_at as due_refresh
from hub.deps import AdminKey, HubDep, ReaderKey, SessionDep
from hub.egress import EgressPolicy
from hub.problems import Problem
from hub.runtime import Hub, TemporalUnavailable
from hub.settings import Settings
from hub.store.base import utcnow
from hub.store.connections import Connection, secret_owner
from hub.store.oauth import (
    consume_state,
    create_state,
    load_secrets,
    purge_expired_states,
    store_tokens,
)
from hub.store.orgs import record_audit
from hub.store.secrets import Secret, put_secret
from webhooks.router import app_intake
from workflows.connection import ConnectionWorkflow

log = logging.getLogger("routes.connections")

router = APIRouter(prefix="/v1/connections", tags=["connections"])
oauth_router = APIRouter(prefix="/oauth", tags=["connections"])

SECRET_LOOKING = re.compile(r"secret|password|passwd|token|private_key|api_key|apikey", re.IGNORECASE)
URL_CONFIG = ("base_url", "token_url", "authorization_url")
_URL = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?([/?#][^\s{}]*)?$")


class ConnectionCreate(BaseModel):
    """A new connection: its provider, a name, non-secret ``config`` and secret ``credentials``."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description="a catalogue provider, e.g. slack, stripe, microsoft")
    name: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="non-secret settings: client_id, tenant_id, user_id, account_id, scopes, and overrides of "
        "base_url / token_url / authorization_url (reached through the egress policy); ca_bundle (PEM text, or a "
        "file name under HUB_CA_BUNDLE_DIR) to trust a private CA; rate_limit ({per_second}) when this "
        "connection's provider account allows more (or less) than the catalogue's rate",
    )
    credentials: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="secrets (client_secret, api_key, username, password, private_key, webhook_secrets); "
        "stored encrypted, never returned",
    )

    @field_validator("config")
    @classmethod
    def _rate_limit(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``config.rate_limit`` is a ``RateLimit`` (``per_second`` > 0, optional ``headroom``)."""
        if "rate_limit" in config:
            try:
                RateLimit.model_validate(config["rate_limit"])
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in ("rate_limit", *first["loc"]))
                raise ValueError(f"{where}: {first['msg']}") from None
        return config


class ConnectionPublic(BaseModel):
    """A connection as the API shows it: configuration and status, never a secret."""

    id: str
    provider: str
    name: str
    auth_mode: str
    status: str
    config: dict[str, Any]
    base_url: str
    scopes: list[str]
    secrets: list[str] = Field(description="names of the stored secrets (never their values)")
    access_expires_at: datetime | None
    last_refresh_at: datetime | None
    next_refresh_at: datetime | None
    last_error: str | None
    webhook_url: str | None
    authorization_url: str | None = Field(
        default=None, description="open this to authorise (OAuth2 code flow)"
    )
    created_at: datetime
    updated_at: datetime


class ConnectionPage(BaseModel):
    """One page of connections, oldest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[ConnectionPublic]
    next_cursor: str | None


def redirect_uri(settings: Settings, provider: str) -> str:
    """The OAuth2 redirect URI to register with the provider."""
    return f"{settings.base_url}/oauth/{provider}/callback"


async def _public(session, hub: Hub, conn: Connection, auth_url: str | None = None) -> ConnectionPublic:  # noqa: ANN001
    entry = catalogue().get(conn.provider)
    endpoints = entry.endpoints(conn.config)
    names = (await session.scalars(select(Secret.name).where(Secret.owner == secret_owner(conn.id)))).all()
    return ConnectionPublic(
        id=conn.id,
        provider=conn.provider,
        name=conn.name,
        auth_mode=conn.auth_mode,
        status=conn.status,
        config=conn.config,
        base_url=endpoints.base_url,
        scopes=endpoints.scopes,
        secrets=sorted(names),
        access_expires_at=conn.access_expires_at,
        last_refresh_at=conn.last_refresh_at,
        next_refresh_at=conn.next_refresh_at,
        last_error=conn.last_error,
        webhook_url=hub.settings.webhook_url(conn.provider, conn.id)
        if entry.webhook
        else None,
        authorization_url=auth_url,
        created_at=conn.created_at,
        updated_at=conn.updated_at,
    )


def _check(entry: Provider, body: ConnectionCreate, egress: EgressPolicy) -> None:
    """Every problem of the request at once, as one 422."""
    errors = []
    if "ca_bundle" in body.config:
        try:
            egress.ca_file(str(body.config["ca_bundle"]))
        except ValueError as exc:
            errors.append(f"config.ca_bundle: {exc}")
    for key, value in body.config.items():
        if key not in ("client_id", *URL_CONFIG) and SECRET_LOOKING.search(key):
            errors.append(f"config.{key} looks secret: send it in credentials")
        if key in URL_CONFIG and not (isinstance(value, str) and re.match(r"^https?://", value)):
            errors.append(f"config.{key} must be an http(s) URL")
    errors += [f"config.{k} is required for {entry.key}" for k in entry.missing_config(body.config)]
    if not errors:
        errors += _url_errors(entry, body.config)
    if entry.auth_mode == "oauth2_code_pkce" and not body.config.get("client_id"):
        errors.append(f"config.client_id is required for {entry.auth_mode}")
    if (scheme := for_provider(entry.key)) is not None:
        value = body.credentials.get("webhook_secrets")
        lines = value if isinstance(value, list) else str(value or "").splitlines()
        errors += scheme.secret_errors([line.strip() for line in lines if str(line).strip()])
    allowed = entry.allowed_credentials
    errors += [
        f"credentials.{k} is not used by {entry.auth_mode} (allowed: {', '.join(allowed)})"
        for k in body.credentials
        if k not in allowed
    ]
    errors += [
        f"credentials.{k} is required for {entry.auth_mode}"
        for k in entry.required_credentials
        if not body.credentials.get(k)
    ]
    if errors:
        raise Problem(422, "; ".join(errors), errors=errors)


def _url_errors(entry: Provider, config: dict) -> list[str]:
    """The connection's URLs, filled in from its config, must be URLs with a host (a ``{`` left over is not)."""
    errors = [f"config.{k} has a '{{' or '}}' in it" for k in URL_CONFIG if re.search("[{}]", str(config.get(k, "")))]
    try:
        endpoints = entry.endpoints(config)
    except (ValueError, KeyError, IndexError) as exc:
        return errors or [f"config: the provider's URLs cannot be filled in from config ({exc})"]
    for name in URL_CONFIG:
        url = getattr(endpoints, name, None)
        if url and not _URL.match(url):
            errors.append(f"config.{name} is not a valid http(s) URL: {url!r}")
    return errors


async def _own(session, org_id: str, connection_id: str) -> Connection:  # noqa: ANN001
    conn = await session.get(Connection, connection_id)
    if conn is None or conn.org_id != org_id or conn.status == "disabled":
        raise Problem(404, f"connection {connection_id!r} not found")
    return conn


async def _authorization(session, hub: Hub, conn: Connection) -> str:  # noqa: ANN001
    """A fresh authorization URL for an OAuth2 code-flow connection (state + encrypted PKCE verifier stored)."""
    entry = catalogue().get(conn.provider)
    if not conn.config.get("client_id"):
        raise Problem(422, "config.client_id is missing: this connection cannot be authorised; create it again")
    verifier = new_code_verifier()
    uri = redirect_uri(hub.settings, conn.provider)
    await purge_expired_states(session)
    state = await create_state(session, hub.vault, conn, uri, verifier)
    return authorization_url(
        entry.endpoints(conn.config), str(conn.config["client_id"]), uri, state, verifier
    )


async def _first_token(client: Client, hub: Hub, conn: Connection) -> None:
    """Ask the (new) ConnectionWorkflow for the first token; failures end up in the connection's status."""
    ref = ConnectionRef(org_id=conn.org_id, connection_id=conn.id)
    try:
        await client.execute_update_with_start_workflow(  # type: ignore[unused-coroutine]  # SDK typing
            ConnectionWorkflow.fresh_token,
            TokenRequest(seen_version=conn.token_version),
            start_workflow_operation=WithStartWorkflowOperation(
                ConnectionWorkflow.run,
                ref,
                id=connection_workflow_id(conn.org_id, conn.id),
                task_queue=hub.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            ),
        )
    except WorkflowUpdateFailedError:
        pass  # the workflow recorded why (last_error, needs_reauth); the response shows it


@router.post("", status_code=201)
async def create_connection(body: ConnectionCreate, hub: HubDep, key: AdminKey) -> ConnectionPublic:
    """Create a connection. OAuth2 code flow: open ``authorization_url``; other modes are ready at once."""
    try:
        entry = catalogue().get(body.provider)
    except KeyError as exc:
        raise Problem(422, str(exc.args[0])) from None
    _check(entry, body, hub.egress)
    client = None
    if entry.auth_mode in ("client_credentials", "jwt_grant"):
        try:
            client = await hub.temporal()
        except TemporalUnavailable as exc:
            raise Problem(503, str(exc), title="Temporal unavailable") from exc
    auth_url = None
    async with hub.db.session() as session:
        conn = Connection(
            org_id=key.org_id,
            provider=entry.key,
            name=body.name or entry.display_name,
            auth_mode=entry.auth_mode,
            config=body.config,
            status="pending_auth" if entry.refreshes else "active",
        )
        session.add(conn)
        await session.flush()
        for name, value in body.credentials.items():
            text = "\n".join(value) if isinstance(value, list) else value
            await put_secret(session, hub.vault, key.org_id, secret_owner(conn.id), name, text)
        if entry.auth_mode == "oauth2_code_pkce":
            auth_url = await _authorization(session, hub, conn)
        await record_audit(
            session,
            key.org_id,
            key.key_id,
            "connection.created",
            f"connection/{conn.id}",
            {"provider": entry.key, "auth_mode": entry.auth_mode, "secrets": sorted(body.credentials)},
        )
    if client is not None:
        await _first_token(client, hub, conn)
    async with hub.db.session() as session:
        created = await session.get(Connection, conn.id)
        await connection_changed(hub, created)  # its sync schedules (first runs now if active)
        return await _public(session, hub, created, auth_url)


@router.get("")
async def list_connections(
    session: SessionDep,
    hub: HubDep,
    key: ReaderKey,
    provider: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ConnectionPage:
    """The org's connections (optionally of one provider), oldest first."""
    query = select(Connection).where(Connection.org_id == key.org_id, Connection.status != "disabled")
    if provider:
        query = query.where(Connection.provider == provider)
    if cursor:
        query = query.where(Connection.id > cursor)
    rows = (await session.scalars(query.order_by(Connection.id).limit(limit + 1))).all()
    page = rows[:limit]
    return ConnectionPage(
        items=[await _public(session, hub, c) for c in page],
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


@router.get("/{connection_id}")
async def get_connection(
    connection_id: str, session: SessionDep, hub: HubDep, key: ReaderKey
) -> ConnectionPublic:
    """One connection: status, last and next refresh, last error — never its secrets."""
    return await _public(session, hub, await _own(session, key.org_id, connection_id))


@router.post("/{connection_id}:authorize")
async def reauthorize(
    connection_id: str, session: SessionDep, hub: HubDep, key: AdminKey
) -> ConnectionPublic:
    """A new authorization URL for an OAuth2 code-flow connection (e.g. one that ``needs_reauth``)."""
    conn = await _own(session, key.org_id, connection_id)
    if conn.auth_mode != "oauth2_code_pkce":
        raise Problem(409, f"a {conn.auth_mode} connection is not authorised in a browser")
    auth_url = await _authorization(session, hub, conn)
    await record_audit(session, key.org_id, key.key_id, "connection.authorize", f"connection/{conn.id}")
    return await _public(session, hub, conn, auth_url)


@router.delete("/{connection_id}", status_code=204)
async def delete_connection(
    connection_id: str, request: Request, session: SessionDep, hub: HubDep, key: AdminKey
) -> Response:
    """Revoke a connection: its secrets are erased, its workflow stopped; it disappears from the API and its
    webhooks are refused from now on (by this API process at once, by others within the credential cache's TTL)."""
    conn = await _own(session, key.org_id, connection_id)
    await lifecycle.delete(session, conn, key.key_id)
    await session.commit()  # before the cache forgets: a delivery arriving now reads the connection as deleted
    app_intake(request.app).credentials.forget(conn.id)
    await lifecycle.deleted(hub, conn)
    return Response(status_code=204)


@oauth_router.get("/{provider}/callback", response_model=ConnectionPublic)
async def oauth_callback(
    provider: str,
    request: Request,
    hub: HubDep,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> ConnectionPublic | RedirectResponse:
    """The provider's redirect after the user's consent: exchange the code, store the tokens, start refreshing.

    A browser (``Accept: text/html``) is sent on to the connection's console page with the outcome."""
    browser = "text/html" in request.headers.get("accept", "")
    try:
        public = await _complete_authorisation(provider, hub, state, code, error, error_description)
    except Problem as exc:
        if not browser:
            raise
        where = f"/{exc.extra['connection_id']}" if "connection_id" in exc.extra else ""
        return RedirectResponse(f"/console/connections{where}?authorisation=failed", status_code=303)
    if browser:
        return RedirectResponse(f"/console/connections/{public.id}?authorisation=ok", status_code=303)
    return public


async def _complete_authorisation(
    provider: str, hub: Hub, state: str | None, code: str | None, error: str | None, error_description: str | None
) -> ConnectionPublic:
    if not state:
        raise Problem(400, "missing state")
    async with hub.db.session() as session:
        taken = await consume_state(session, hub.vault, provider, state)
    if taken is None:
        raise Problem(400, "unknown, used or expired state: start the authorisation again")
    pending, verifier = taken
    async with hub.db.session() as session:
        conn = await session.get(Connection, pending.connection_id)
        if conn is None or conn.org_id != pending.org_id or conn.status == "disabled":
            raise Problem(404, "the connection no longer exists")
        secrets = await load_secrets(session, hub.vault, conn.id)
    entry = catalogue().get(provider)
    failure = None
    if error or not code:
        failure = Problem(
            400,
            f"authorisation refused: {error or 'no code'}"
            + (f" ({error_description})" if error_description else ""),
            connection_id=conn.id,
        )
    else:
        try:
            tokens = await exchange_code(
                entry,
                entry.endpoints(conn.config),
                ClientAuth.for_connection(conn.config, secrets, hub.egress),
                pending.redirect_uri,
                code,
                verifier,
            )
        except TokenEndpointError as exc:
            failure = Problem(502 if exc.retryable else 400, f"code exchange failed: {exc}", connection_id=conn.id)
    async with hub.db.session() as session:
        conn = await session.get(Connection, conn.id)
        if failure is not None:
            conn.last_error = failure.detail
        else:
            await store_tokens(
                session,
                hub.vault,
                conn,
                from_version=conn.token_version,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at,
                next_refresh_at=due_refresh(entry, tokens.expires_at, utcnow(), bool(tokens.refresh_token)),
            )
            await record_audit(
                session,
                conn.org_id,
                "oauth-callback",
                "connection.authorized",
                f"connection/{conn.id}",
                {"token_version": conn.token_version},
            )
    if failure is not None:
        raise failure
    await lifecycle.activated(hub, conn)
    async with hub.db.session() as session:
        return await _public(session, hub, await session.get(Connection, conn.id))


