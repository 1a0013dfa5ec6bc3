"""The one egress policy: where the hub may send a request whose URL a tenant controls.

Every tenant-directed client leaves through ``EgressPolicy``: connection URLs (``base_url``,
``token_url``) for every SDK (httpx for Gong/Graph/generic/Stripe/OpenAI, httpx2 under authlib,
aiohttp under slack-sdk, urllib3 under docusign-esign and requests under msal), the CRM callback,
Graph notification URLs and the ``http.post`` action. Each request (and each redirect hop) passes
``EgressPolicy.admit``: the host is resolved, every address checked by ``rules.netguard`` (no
loopback, private, link-local, shared, metadata or reserved address unless ``HUB_HTTP_ALLOWLIST``
lists the host or a CIDR holding it), and the connection goes to the checked address itself, so a
second DNS answer cannot rebind it. ``admit`` is the single per-request point (budgets can draw
there too); the adapters below only plug it into each HTTP stack:

- ``httpx_transport()`` / ``httpx2_transport()``: an httpx(2) transport (URL host pinned to the
  checked address; Host header and TLS SNI keep the name);
- ``aiohttp_session()``: a session whose resolver returns only checked addresses, and which checks
  literal-address URLs (that skip resolvers) before each request;
- ``guard_pools(pool_manager)``: urllib3 pools (docusign-esign, requests) whose connections open to
  the checked address (TLS still verified against the name).

``ca_file`` turns a connection's ``ca_bundle`` (PEM text, or a path under ``HUB_CA_BUNDLE_DIR``)
into a file the hub wrote: never an arbitrary path on the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rules.netguard import DestinationRefused, IPAddress, check_addresses, parse_url

__all__ = ["Destination", "DestinationRefused", "EgressPolicy"]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
SyncResolver = Callable[[str, int], Sequence[str]]
PEM_MARKER = "-----BEGIN CERTIFICATE-----"


async def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def resolve_sync(host: str, port: int) -> list[str]:
    """``resolve`` for SDKs that run blocking in a thread."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class Destination:
    """An admitted request's target: the URL's scheme, host and port, and the checked address to use."""

    scheme: str
    host: str
    port: int
    address: IPAddress

    @property
    def ip(self) -> str:
        """The checked address as text (no brackets)."""
        return str(self.address)


class EgressPolicy:
    """Admits or refuses tenant-directed destinations; builds guarded clients for each HTTP stack."""

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        resolver: Resolver = resolve,
        sync_resolver: SyncResolver = resolve_sync,
        ca_dir: Path | None = None,
        pem_dir: Path | None = None,
    ) -> None:
        self.allowlist = [entry for entry in allowlist if entry.strip()]
        self.resolver = resolver
        self.sync_resolver = sync_resolver
        self.ca_dir = ca_dir.resolve() if ca_dir else None
        self.pem_dir = pem_dir

    @classmethod
    def from_settings(cls, settings: Any) -> EgressPolicy:
        """From ``HUB_HTTP_ALLOWLIST`` and ``HUB_CA_BUNDLE_DIR``; PEM bundles are written under the data dir."""
        return cls(settings.http_allowlist, ca_dir=settings.ca_bundle_dir, pem_dir=settings.data_dir / "ca-bundles")

    # --- the decision -----------------------------------------------------------------------------
    async def admit(self, url: str) -> Destination:
        """Resolve and check ``url``'s host: the address to connect to, or ``DestinationRefused``."""
        scheme, host, port = parse_url(url)
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            raise DestinationRefused(f"{host} does not resolve: {exc}") from None
        return Destination(scheme, host, port, check_addresses(host, addresses, self.allowlist)[0])

    def admit_sync(self, url: str) -> Destination:
        """``admit`` for blocking SDKs (runs in their thread)."""
        scheme, host, port = parse_url(url)
        try:
            addresses = self.sync_resolver(host, port)
        except OSError as exc:
            raise DestinationRefused(f"{host} does not resolve: {exc}") from None
        return Destination(scheme, host, port, check_addresses(host, addresses, self.allowlist)[0])

    # --- trust --------------------------------------------------------------------------------------
    def ca_file(self, ca_bundle: str | None) -> str | None:
        """A connection's ``ca_bundle`` as a CA file path: PEM text is written (once, mode 0600) under the
        data dir; a path must lie under ``HUB_CA_BUNDLE_DIR``. ``ValueError`` for anything else."""
        if not ca_bundle:
            return None
        if ca_bundle.lstrip().startswith(PEM_MARKER):
            return str(self._pem_file(ca_bundle))
        if self.ca_dir is None:
            raise ValueError("ca_bundle must be PEM text (-----BEGIN CERTIFICATE-----...); no CA directory is configured")
        path = (self.ca_dir / ca_bundle).resolve()
        if not path.is_relative_to(self.ca_dir):
            raise ValueError("ca_bundle must be PEM text or a file name under the configured CA directory")
        return str(path)

    def _pem_file(self, pem: str) -> Path:
        from cryptography import x509

        try:
            x509.load_pem_x509_certificates(pem.encode())
        except ValueError:
            raise ValueError("ca_bundle is not valid PEM certificate text") from None
        if self.pem_dir is None:
            raise ValueError("no directory to keep PEM CA bundles in")
        self.pem_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.pem_dir / f"{hashlib.sha256(pem.encode()).hexdigest()[:32]}.pem"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(pem)
            tmp.replace(path)
        return path

    # --- adapters -----------------------------------------------------------------------------------
    def httpx_transport(self, verify: Any = True, inner: httpx.AsyncBaseTransport | None = None) -> GuardedTransport:
        """An httpx transport that admits every request (``verify``: True, a CA file or an SSL context)."""
        return GuardedTransport(self, inner or httpx.AsyncHTTPTransport(verify=verify))

    def httpx2_transport(self, verify: Any = True) -> Any:
        """The same for httpx2 (what authlib's OAuth2 client runs on)."""
        import httpx2

        class Guarded2(_Pinning, httpx2.AsyncBaseTransport):
            pass

        return Guarded2(self, httpx2.AsyncHTTPTransport(verify=verify))

    def httpx_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on ``httpx_transport()`` (kwargs as for httpx, ``verify`` included)."""
        return httpx.AsyncClient(transport=self.httpx_transport(kwargs.pop("verify", True)), **kwargs)

    def aiohttp_session(self) -> Any:
        """An aiohttp session (for slack-sdk) that only connects to admitted addresses."""
        import aiohttp
        import yarl

        policy = self

        class Resolver(aiohttp.abc.AbstractResolver):
            async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
                scheme = "https" if port == 443 else "http"
                checked = await policy.admit(f"{scheme}://{_bracket(host)}:{port or 80}/")
                return [{"hostname": host, "host": checked.ip, "port": port,
                         "family": socket.AF_INET6 if checked.address.version == 6 else socket.AF_INET,
                         "proto": 0, "flags": socket.AI_NUMERICHOST}]

            async def close(self) -> None:
                return None

        async def literal_host(url: Any) -> None:
            if _is_ip(url.host or ""):  # aiohttp skips the resolver for addresses: check them here
                await policy.admit(str(url))

        async def on_start(_session: object, _ctx: object, params: Any) -> None:
            await literal_host(params.url)

        async def on_redirect(_session: object, _ctx: object, params: Any) -> None:
            location = params.response.headers.get("Location")
            if location:
                await literal_host(params.url.join(yarl.URL(location)))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        trace.on_request_redirect.append(on_redirect)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=Resolver()), trace_configs=[trace])

    def guard_pools(self, pool_manager: Any) -> Any:
        """Make a urllib3 ``PoolManager`` (docusign-esign, requests) open connections only to admitted
        addresses; returns it."""
        from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
        from urllib3.connection import HTTPConnection, HTTPSConnection

        policy = self

        def pinned(connection: HTTPConnection, connect: Callable[[], socket.socket]) -> socket.socket:
            scheme = "https" if isinstance(connection, HTTPSConnection) else "http"
            name = connection._dns_host  # also ``host``: the Host header and TLS name keep it
            connection._dns_host = policy.admit_sync(f"{scheme}://{_bracket(name)}:{connection.port}/").ip
            try:
                return connect()
            finally:
                connection._dns_host = name

        class Http(HTTPConnection):
            def _new_conn(self) -> socket.socket:
                return pinned(self, super()._new_conn)

        class Https(HTTPSConnection):
            def _new_conn(self) -> socket.socket:
                return pinned(self, super()._new_conn)

        class HttpPool(HTTPConnectionPool):
            ConnectionCls = Http

        class HttpsPool(HTTPSConnectionPool):
            ConnectionCls = Https

        pool_manager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}
        return pool_manager

    def requests_session(self, verify: str | bool = True) -> Any:
        """A requests session (for msal) on guarded urllib3 pools; environment CA/proxy settings ignored."""
        import requests
        from requests.adapters import HTTPAdapter

        policy = self

        class Adapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                super().init_poolmanager(*args, **kwargs)
                policy.guard_pools(self.poolmanager)

        session = requests.Session()
        session.verify, session.trust_env = verify, False
        for prefix in ("http://", "https://"):
            session.mount(prefix, Adapter())
        return session


class _Pinning:
    """Admit each request, then send it to the checked address (Host header and SNI keep the name)."""

    def __init__(self, policy: EgressPolicy, inner: Any) -> None:
        self.policy = policy
        self.inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        destination = await self.policy.admit(str(request.url))
        original = request.url
        request.url = original.copy_with(host=destination.ip)
        if destination.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": destination.host}
        try:
            return await self.inner.handle_async_request(request)
        finally:
            request.url = original

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedTransport(_Pinning, httpx.AsyncBaseTransport):
    """The httpx transport of ``EgressPolicy.httpx_transport``."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
