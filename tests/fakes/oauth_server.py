"""A generic OAuth 2.0 authorization server plus a protected API, on 127.0.0.1 (HTTP or HTTPS).

Wire format of RFC 6749 / 7636 / 7523: ``GET /authorize`` (code + PKCE S256, redirects to the client
with ``code`` and ``state``), ``POST /token`` (also ``…/oauth/token`` as DocuSign and
``/{tenant}/oauth2/v2.0/token`` as Microsoft, whose discovery document msal reads) for the grants
``authorization_code``, ``refresh_token`` (rotating: each refresh issues a new refresh token and the
old one is dead — its reuse is ``invalid_grant``), ``client_credentials`` and the JWT bearer grant.
Errors are ``400 {"error": ..., "error_description": ...}``. ``/api/...`` is a protected resource:
``401`` for an unknown or expired bearer token, ``429`` + ``Retry-After`` above ``limit_per_second``.

Knobs: ``expires_in``, ``rotate``, ``token_delay`` (seconds the token endpoint takes, to widen races),
``refuse(error)`` (the next token requests answer that OAuth error), ``expire_all()``, ``serve_list(path,
rows)`` (a cursor-paged list at ``/api/<path>``: ``?limit=&cursor=&updated_since=`` → ``{"data", "next_cursor"}``),
``respond_after(path, seconds)`` (matching API requests are answered that late, after taking effect; ``answering``: the keys
of those not answered yet), and the
failure injection of ``FakeServer`` (``fail``, ``rate_limit``). A request with an ``Idempotency-Key`` takes effect
once (``applied``: key → path); the key again is answered as the first time, with ``Idempotent-Replayed: true``
(``replayed``: those keys).
Counters: ``token_calls`` (grant per call), ``api_times`` (monotonic time of every served API request),
``arrivals`` (every request).

    with OAuthFake() as idp:
        idp.register_client("cid", "csecret")
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token, body_params

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str | None
    scope: str


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost (PEM paths: cert, key); the cert is its own CA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-tls-cert.pem", directory / "fake-tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def rsa_key_pair() -> tuple[str, str]:
    """(private key PEM, public key PEM) for JWT grants."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class OAuthFake(FakeServer):
    """Authorization server + protected API. Thread-safe: the token endpoint is serialised by a lock."""

    def __init__(self, *, expires_in: int = 3600, rotate: bool = True, limit_per_second: float | None = None) -> None:
        super().__init__(tokens=())
        self.expires_in = expires_in
        self.rotate = rotate
        self.limit_per_second = limit_per_second
        self.token_delay = 0.0
        self.clients: dict[str, str | None] = {}  # client_id -> secret (None: public client)
        self.jwt_keys: dict[str, str] = {}  # client_id -> public key PEM
        self.access: dict[str, float] = {}  # access token -> expiry (monotonic)
        self.refresh: dict[str, str] = {}  # live refresh token -> client_id
        self.dead_refresh: set[str] = set()  # rotated-out refresh tokens (reuse → invalid_grant)
        self.codes: dict[str, _Code] = {}
        self.token_calls: list[str] = []
        self.api_times: list[float] = []
        self.throttled = 0  # API requests answered 429 for exceeding limit_per_second
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, path) of every request, faults included
        self.lists: dict[str, list[dict[str, Any]]] = {}  # path under /api/ -> rows of a paged list
        self.applied: dict[str, str] = {}  # idempotency key -> path of the request that took effect
        self.replayed: list[str] = []  # idempotency keys sent again after taking effect (answered as the first time)
        self.slow: list[tuple[re.Pattern[str], float]] = []  # API paths answered late, and how late
        self.answering: set[str] = set()  # idempotency keys of requests that took effect and wait to be answered
        self._refusals: deque[str] = deque()
        self._recent: deque[float] = deque()
        self._token_lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if scope["type"] == "http":
            self.arrivals.append((time.monotonic(), scope["path"]))
        await super().__call__(scope, receive, send)

    # --- setup ---------------------------------------------------------------------------------
    def register_client(self, client_id: str, secret: str | None = None, *, jwt_public_key: str | None = None) -> None:
        """Accept a client (confidential with a secret, public without; JWT grant with a public key)."""
        self.clients[client_id] = secret
        if jwt_public_key:
            self.jwt_keys[client_id] = jwt_public_key

    def issue(self, client_id: str, *, expires_in: int | None = None) -> tuple[str, str]:
        """Mint an (access token, refresh token) pair directly, as if a code had been exchanged."""
        access, refresh = self._mint(client_id, expires_in)
        return access, refresh or ""

    def refuse(self, error: str = "invalid_grant", times: int = 1) -> None:
        """The next ``times`` token requests answer ``400 {"error": error}``."""
        self._refusals.extend([error] * times)

    def serve_list(self, path: str, rows: list[dict[str, Any]]) -> None:
        """Serve ``rows`` (each with an ``id``) as a cursor-paged list at ``GET /api/<path>``."""
        self.lists[path.strip("/")] = rows

    def respond_after(self, path: str, seconds: float) -> None:
        """Answer API requests whose path matches the regex ``path`` ``seconds`` late (they take effect at once)."""
        self.slow.append((re.compile(path), seconds))

    def expire_all(self) -> None:
        """Every access token issued so far is now expired (API calls with them get 401)."""
        for token in self.access:
            self.access[token] = 0.0

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def authorization_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    # --- endpoints -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/authorize", self.authorize, methods=["GET"]),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self.discovery, methods=["GET"]),
            Route("/{prefix:path}/token", self.token, methods=["POST"]),
            Route("/token", self.token, methods=["POST"]),
            Route("/api/{rest:path}", self.api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": code, "error_description": message}, status_code=status)

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        client_id, redirect_uri = q.get("client_id", ""), q.get("redirect_uri", "")
        if client_id not in self.clients or not redirect_uri:
            return self.error(400, "invalid_request", "unknown client_id or missing redirect_uri")
        if q.get("response_type") != "code":
            return self.error(400, "unsupported_response_type", "response_type must be code")
        if q.get("code_challenge") and q.get("code_challenge_method") != "S256":
            return self.error(400, "invalid_request", "only S256 code challenges")
        code = secrets.token_urlsafe(16)
        self.codes[code] = _Code(client_id, redirect_uri, q.get("code_challenge"), q.get("scope", ""))
        return RedirectResponse(f"{redirect_uri}?{urlencode({'code': code, 'state': q.get('state', '')})}", 302)

    async def discovery(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = f"{self.url}/{tenant}"
        return JSONResponse({
            "issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token", "token_endpoint_auth_methods_supported":
                ["client_secret_post", "client_secret_basic", "private_key_jwt"],
            "response_types_supported": ["code"], "scopes_supported": ["openid"],
        })

    async def token(self, request: Request) -> Response:
        form = await body_params(request)
        client_id, secret = self._client_auth(request, form)
        with self._token_lock:  # one token request at a time, as a real server's per-grant consistency
            self.token_calls.append(form.get("grant_type", "?"))
            if self.token_delay:
                time.sleep(self.token_delay)
            if self._refusals:
                error = self._refusals.popleft()
                return self.error(400, error, f"refused by the fake ({error})")
            return self._grant(form, client_id, secret)

    def _grant(self, form: dict[str, Any], client_id: str | None, secret: str | None) -> Response:
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return self._jwt_grant(form)
        if client_id not in self.clients or self.clients[client_id] != secret:
            return self.error(401, "invalid_client", "client authentication failed")
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code.client_id != client_id or code.redirect_uri != form.get("redirect_uri"):
                return self.error(400, "invalid_grant", "unknown or used code, or redirect_uri mismatch")
            if code.challenge:
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if digest != code.challenge:
                    return self.error(400, "invalid_grant", "PKCE verification failed")
            return self._token_response(client_id, scope=code.scope)
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            if presented in self.dead_refresh or self.refresh.get(presented) != client_id:
                return self.error(400, "invalid_grant", "refresh token is invalid, expired or already used")
            if self.rotate:
                del self.refresh[presented]
                self.dead_refresh.add(presented)
                return self._token_response(client_id)
            return self._token_response(client_id, refresh=False)
        if grant == "client_credentials":
            return self._token_response(client_id, refresh=False, scope=form.get("scope", ""))
        return self.error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _jwt_grant(self, form: dict[str, Any]) -> Response:
        assertion = form.get("assertion", "")
        try:
            client_id = jwt.decode(assertion, options={"verify_signature": False})["iss"]
            claims = jwt.decode(assertion, self.jwt_keys[client_id], algorithms=["RS256"],
                                options={"verify_aud": False})
        except (KeyError, jwt.PyJWTError):
            return self.error(400, "invalid_grant", "no_valid_keys_or_signatures")
        if not claims.get("sub"):
            return self.error(400, "invalid_grant", "the assertion names no user")
        return self._token_response(client_id, refresh=False, scope=claims.get("scope", ""))

    def _client_auth(self, request: Request, form: dict[str, Any]) -> tuple[str | None, str | None]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user, password
        return form.get("client_id"), form.get("client_secret")

    def _mint(self, client_id: str, expires_in: int | None = None, refresh: bool = True) -> tuple[str, str | None]:
        lifetime = self.expires_in if expires_in is None else expires_in
        access = f"at-{secrets.token_urlsafe(18)}"
        self.access[access] = time.monotonic() + lifetime
        refresh_token = None
        if refresh:
            refresh_token = f"rt-{secrets.token_urlsafe(18)}"
            self.refresh[refresh_token] = client_id
        return access, refresh_token

    def _token_response(self, client_id: str, *, refresh: bool = True, scope: str = "") -> Response:
        access, refresh_token = self._mint(client_id, refresh=refresh)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in}
        if refresh_token:
            body["refresh_token"] = refresh_token
        if scope:
            body["scope"] = scope
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def api(self, request: Request) -> Response:
        token = bearer_token(request)
        if token is None or self.access.get(token, 0.0) <= time.monotonic():
            return JSONResponse({"error": "invalid_token", "error_description": "expired or unknown token"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        now = time.monotonic()
        with self._lock:
            if self.limit_per_second:
                while self._recent and now - self._recent[0] >= 1.0:
                    self._recent.popleft()
                if len(self._recent) >= self.limit_per_second:
                    self.throttled += 1
                    return self.rate_limit_error(1)
                self._recent.append(now)
            self.api_times.append(now)
        rest = request.path_params["rest"]
        if request.method == "GET" and rest.strip("/") in self.lists:
            return self._list_page(self.lists[rest.strip("/")], request)
        key = request.headers.get("idempotency-key")
        with self._lock:
            replayed = key is not None and key in self.applied
            if replayed:
                self.replayed.append(key)
            elif key is not None:
                self.applied[key] = request.url.path
        body = await body_params(request) if request.method != "GET" else {}
        for pattern, seconds in self.slow:
            if pattern.search(request.url.path):
                self.answering.add(key or "")
                try:
                    await asyncio.sleep(seconds)
                finally:
                    self.answering.discard(key or "")
        return JSONResponse({"ok": True, "method": request.method, "path": rest, "received": body,
                             "idempotency_key": key}, headers={"Idempotent-Replayed": "true"} if replayed else None)

    @staticmethod
    def _list_page(rows: list[dict[str, Any]], request: Request) -> Response:
        q = request.query_params
        if since := q.get("updated_since"):
            rows = [r for r in rows if str(r.get("updated_at", "")) >= since]
        start, limit = int(q.get("cursor") or 0), int(q.get("limit") or 100)
        more = start + limit < len(rows)
        return JSONResponse({"data": rows[start:start + limit], "next_cursor": str(start + limit) if more else None})
