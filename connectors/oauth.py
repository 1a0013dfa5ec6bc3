"""Talking to token endpoints: authorization URLs (PKCE), code exchange, and each token auth mode's grant.

authlib for the standard OAuth2 flows, msal for Microsoft client credentials, the DocuSign SDK for its
JWT grant (which only speaks https). Pure I/O helpers: callers decide where tokens are stored and who
may call ``obtain_token`` (only the ``connection.refresh`` activity and the OAuth callback do). Every
token endpoint is a tenant's URL: it is admitted by the egress policy first (a refusal needs a new
configuration: ``reauth``) and each SDK's connections go through the policy's guarded clients.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from connectors.catalogue import Endpoints, Provider
from hub.egress import DestinationRefused, EgressPolicy

JWT_LIFETIME = 3600
_RETRYABLE_OAUTH_ERRORS = {"temporarily_unavailable", "server_error", "slow_down", "ratelimited"}


@dataclass(frozen=True)
class TokenSet:
    """Tokens a token endpoint issued. Never logged, never sent to Temporal."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    scope: str | None = None


@dataclass(frozen=True)
class ClientAuth:
    """What the hub presents at a connection's token endpoint."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    user_id: str | None = None  # DocuSign: the user the JWT grant impersonates
    verify: str | bool = True  # a CA file the egress policy wrote (from the connection's ca_bundle)
    egress: EgressPolicy = field(default_factory=EgressPolicy, repr=False)

    @classmethod
    def for_connection(cls, config: dict, secrets: dict[str, str], egress: EgressPolicy) -> ClientAuth:
        """From a connection's config (client_id, user_id, ca_bundle) and decrypted secrets; a ca_bundle the
        egress policy refuses is a ``TokenEndpointError`` needing a new configuration."""
        try:
            verify = egress.ca_file(config.get("ca_bundle")) or True
        except ValueError as exc:
            raise TokenEndpointError(str(exc), reauth=True) from None
        return cls(
            client_id=str(config.get("client_id", "")),
            client_secret=secrets.get("client_secret"),
            private_key=secrets.get("private_key"),
            refresh_token=secrets.get("refresh_token"),
            user_id=config.get("user_id"),
            verify=verify,
            egress=egress,
        )


class TokenEndpointError(Exception):
    """The token endpoint refused or failed. ``reauth``: only a new authorisation helps; ``retryable``: try again."""

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None,
                 reauth: bool = False, retryable: bool = False) -> None:
        super().__init__(message)
        self.error = error
        self.status = status
        self.reauth = reauth
        self.retryable = retryable


def new_code_verifier() -> str:
    """A fresh PKCE code verifier (RFC 7636: 43–128 unreserved characters)."""
    return generate_token(64)


def authorization_url(endpoints: Endpoints, client_id: str, redirect_uri: str, state: str, code_verifier: str) -> str:
    """The provider's authorization URL with PKCE (S256) and ``state``."""
    if not endpoints.authorization_url:
        raise ValueError("the provider has no authorization URL")
    client = AsyncOAuth2Client(
        client_id=client_id, scope=endpoints.scope or None, redirect_uri=redirect_uri, code_challenge_method="S256"
    )
    url, _ = client.create_authorization_url(endpoints.authorization_url, state=state, code_verifier=code_verifier)
    return url


async def exchange_code(
    provider: Provider, endpoints: Endpoints, auth: ClientAuth, redirect_uri: str, code: str, code_verifier: str
) -> TokenSet:
    """Authorization code (+ PKCE verifier) → tokens."""
    await _admit(auth, endpoints.token_url)
    async with _authlib_client(provider, endpoints, auth, redirect_uri=redirect_uri) as client:
        return await _authlib_call(
            provider,
            client.fetch_token(endpoints.token_url, grant_type="authorization_code", code=code,
                               code_verifier=code_verifier),
        )


async def obtain_token(provider: Provider, endpoints: Endpoints, auth: ClientAuth) -> TokenSet:
    """A new access token by the connection's grant: refresh token, client credentials or JWT."""
    await _admit(auth, endpoints.token_url)
    if provider.auth_mode == "oauth2_code_pkce":
        if not auth.refresh_token:
            raise TokenEndpointError("no refresh token: the connection must be authorised again", reauth=True)
        async with _authlib_client(provider, endpoints, auth) as client:
            tokens = await _authlib_call(provider, client.refresh_token(endpoints.token_url,
                                                                        refresh_token=auth.refresh_token))
        # Providers that do not rotate answer without a refresh token: the old one stays valid.
        return tokens if tokens.refresh_token else TokenSet(
            tokens.access_token, auth.refresh_token, tokens.expires_at, tokens.scope
        )
    if provider.auth_mode == "client_credentials":
        if provider.token_client == "msal":
            return await asyncio.to_thread(_msal_client_credentials, endpoints, auth)
        async with _authlib_client(provider, endpoints, auth) as client:
            return await _authlib_call(
                provider, client.fetch_token(endpoints.token_url, grant_type="client_credentials",
                                             scope=endpoints.scope or None)
            )
    if provider.auth_mode == "jwt_grant":
        return await asyncio.to_thread(_docusign_jwt, provider, endpoints, auth)
    raise ValueError(f"auth mode {provider.auth_mode} has no token endpoint")


async def _admit(auth: ClientAuth, token_url: str | None) -> None:
    try:
        await auth.egress.admit(token_url or "")
    except DestinationRefused as exc:
        raise TokenEndpointError(f"token_url refused: {exc}", reauth=True) from None


def _authlib_client(provider: Provider, endpoints: Endpoints, auth: ClientAuth,
                    redirect_uri: str | None = None) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        token_endpoint_auth_method=provider.token_auth_method if auth.client_secret else "none",
        redirect_uri=redirect_uri,
        transport=auth.egress.httpx2_transport(auth.verify),
        timeout=30,
    )


async def _authlib_call(provider: Provider, call) -> TokenSet:  # noqa: ANN001 - an authlib coroutine
    import httpx2

    try:
        token = await call
    except OAuthError as exc:
        raise _oauth_error(provider, exc.error, exc.description) from None
    except httpx2.HTTPStatusError as exc:
        status = exc.response.status_code
        raise TokenEndpointError(f"token endpoint answered HTTP {status}", status=status,
                                 retryable=status == 429 or status >= 500) from None
    except httpx2.TransportError as exc:
        raise TokenEndpointError(f"token endpoint unreachable: {type(exc).__name__}", retryable=True) from None
    except DestinationRefused as exc:  # a redirect, or the name resolving elsewhere now
        raise TokenEndpointError(f"token endpoint refused: {exc}", reauth=True) from None
    return _token_set(token)


def _oauth_error(provider: Provider, error: str | None, description: str | None) -> TokenEndpointError:
    message = f"{error}: {description}" if description else str(error)
    return TokenEndpointError(
        f"token endpoint refused: {message}",
        error=error,
        reauth=error in provider.reauth_errors,
        retryable=error in _RETRYABLE_OAUTH_ERRORS,
    )


def _token_set(token: dict) -> TokenSet:
    if not token.get("access_token"):
        raise TokenEndpointError("token endpoint answered without an access_token")
    expires_at = None
    if token.get("expires_at"):
        expires_at = datetime.fromtimestamp(int(token["expires_at"]), UTC)
    elif token.get("expires_in"):
        expires_at = datetime.now(UTC) + timedelta(seconds=int(token["expires_in"]))
    return TokenSet(str(token["access_token"]), token.get("refresh_token") or None, expires_at, token.get("scope"))


def _msal_client_credentials(endpoints: Endpoints, auth: ClientAuth) -> TokenSet:
    """Microsoft identity platform client credentials via msal (blocking; run in a thread)."""
    import msal
    import requests

    token_url = endpoints.token_url or ""
    authority = token_url.removesuffix("/oauth2/v2.0/token")
    if authority == token_url:
        raise TokenEndpointError("a Microsoft token_url must end with /oauth2/v2.0/token")
    # the egress policy's session; it ignores REQUESTS_CA_BUNDLE & co, which would override Session.verify
    session = auth.egress.requests_session(auth.verify)
    session.request = functools.partial(session.request, timeout=30)
    try:
        app = msal.ConfidentialClientApplication(
            auth.client_id, client_credential=auth.client_secret, authority=authority, instance_discovery=False,
            http_client=session,
        )
        result = app.acquire_token_for_client(scopes=endpoints.scopes)
    except DestinationRefused as exc:
        raise TokenEndpointError(f"token endpoint refused: {exc}", reauth=True) from None
    except requests.RequestException as exc:
        raise TokenEndpointError(f"token endpoint unreachable: {type(exc).__name__}", retryable=True) from None
    except ValueError as exc:  # msal: authority discovery failed
        raise TokenEndpointError(f"Microsoft authority unusable: {exc}", retryable=True) from None
    if "access_token" not in result:
        error = result.get("error")
        raise TokenEndpointError(
            f"token endpoint refused: {error}: {result.get('error_description', '')}".strip(),
            error=error,
            reauth=error in ("invalid_client", "unauthorized_client", "invalid_grant"),
            retryable=error in _RETRYABLE_OAUTH_ERRORS,
        )
    return _token_set(result)


def _docusign_jwt(provider: Provider, endpoints: Endpoints, auth: ClientAuth) -> TokenSet:
    """DocuSign JWT grant through its SDK (blocking; run in a thread). The SDK only calls https hosts."""
    import urllib3
    from docusign_esign import ApiClient, Configuration
    from docusign_esign.client.api_exception import ApiException
    from docusign_esign.client.api_response import RESTClientObject

    url = urlparse(endpoints.token_url or "")
    if url.scheme != "https" or url.path.rstrip("/") != "/oauth/token":
        raise TokenEndpointError("the DocuSign JWT grant needs an https token_url ending in /oauth/token")
    if not auth.private_key or not auth.user_id:
        raise TokenEndpointError("the JWT grant needs a private_key and config.user_id", reauth=True)
    client = ApiClient(oauth_host_name=url.netloc)
    if isinstance(auth.verify, str):
        config = Configuration()
        config.ssl_ca_cert = auth.verify
        client.rest_client = RESTClientObject(configuration=config)
    auth.egress.guard_pools(client.rest_client.pool_manager)
    try:
        token = client.request_jwt_user_token(
            auth.client_id, auth.user_id, url.netloc, auth.private_key.encode(), JWT_LIFETIME,
            scopes=endpoints.scopes,
        )
    except ApiException as exc:
        error, description = _docusign_error(exc.body)
        status = int(exc.status or 0)
        if error:
            raise _oauth_error(provider, error, description) from None
        raise TokenEndpointError(f"token endpoint answered HTTP {status}", status=status,
                                 retryable=status == 429 or status >= 500 or status == 0) from None
    except DestinationRefused as exc:
        raise TokenEndpointError(f"token endpoint refused: {exc}", reauth=True) from None
    except urllib3.exceptions.HTTPError as exc:
        raise TokenEndpointError(f"token endpoint unreachable: {type(exc).__name__}", retryable=True) from None
    return _token_set({"access_token": token.access_token, "expires_in": token.expires_in,
                       "refresh_token": None, "scope": token.scope})


def _docusign_error(body: bytes | str | None) -> tuple[str | None, str | None]:
    try:
        data = json.loads(body or b"")
    except (ValueError, TypeError):
        return None, None
    return (data.get("error"), data.get("error_description")) if isinstance(data, dict) else (None, None)


REFRESH_LEAD_FRACTION = 5  # refresh a fifth of the token's lifetime before it expires ...
REFRESH_LEAD_MAX = timedelta(minutes=10)  # ... but no more than this early
REFRESH_LEAD_UNKNOWN = timedelta(seconds=30)  # the lead when a token's lifetime is not known


def refresh_lead(lifetime: timedelta | None) -> timedelta:
    """How long before expiry a token of ``lifetime`` is refreshed: a fifth of its lifetime, at most 10 min
    (an 8-second token is refreshed 1.6 s early, not 30 s early — which would be before it was issued)."""
    if lifetime is None:
        return REFRESH_LEAD_UNKNOWN
    return min(max(lifetime, timedelta(0)) / REFRESH_LEAD_FRACTION, REFRESH_LEAD_MAX)


def next_refresh_at(provider: Provider, expires_at: datetime | None, now: datetime,
                    has_refresh_token: bool) -> datetime | None:
    """When the ConnectionWorkflow should next refresh: ahead of expiry by ``refresh_lead`` of the token's
    lifetime (so never sooner than four fifths of a lifetime after the refresh that issued it) and, where
    refresh tokens rotate, at least every ``refresh.max_interval``. None when there is nothing to refresh
    (no expiry, or an OAuth2 token without a refresh token)."""
    if provider.auth_mode == "oauth2_code_pkce" and not has_refresh_token:
        return None
    due: list[datetime] = []
    if expires_at is not None:
        due.append(max(expires_at - refresh_lead(expires_at - now), now))
    if provider.refresh.rotating and provider.refresh.max_interval:
        due.append(now + provider.refresh.max_interval)
    return min(due) if due else None
