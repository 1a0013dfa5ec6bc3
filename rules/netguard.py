"""Where ``http.post`` may send a request: the pure half of the SSRF guard.

A destination is refused when any address its host resolves to is loopback, private, link-local,
shared (CGNAT), multicast, reserved, unspecified or a cloud metadata address — unless the host or
the address is allow-listed (exact host names or CIDR blocks). The caller resolves DNS, checks
every address here, then connects to a checked address (so a second lookup cannot rebind it) and
never follows redirects (``activities.http_action``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)
SHARED_NET = ipaddress.ip_network("100.64.0.0/10")


class DestinationRefused(ValueError):
    """A URL or address http.post must not reach; the message says why."""


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an absolute http(s) URL without credentials; ``DestinationRefused`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise DestinationRefused("the URL has no host")
    if parts.username or parts.password:
        raise DestinationRefused("credentials in the URL are not allowed; use headers")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefused(f"bad port: {exc}") from None
    return parts.scheme, parts.hostname.rstrip(".").lower(), port


def refusal(address: IPAddress) -> str | None:
    """Why an address is not a public destination, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_unspecified", "the unspecified address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED_NET:
        return "a shared (carrier-grade NAT) address"
    if isinstance(address, ipaddress.IPv6Address) and (address.sixtofour or address.teredo):
        return "a 6to4/Teredo tunnel address"
    return None


def allowed(host: str, address: IPAddress, allowlist: Iterable[str]) -> bool:
    """Whether the host name or the address is explicitly allow-listed."""
    for entry in allowlist:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == host:
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_addresses(host: str, addresses: Sequence[str], allowlist: Iterable[str] = ()) -> list[IPAddress]:
    """The resolved addresses of ``host`` if every one may be reached; ``DestinationRefused`` otherwise."""
    if not addresses:
        raise DestinationRefused(f"{host} does not resolve to any address")
    allowlist = list(allowlist)
    checked: list[IPAddress] = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = refusal(address)
        if reason and not allowed(host, address, allowlist):
            raise DestinationRefused(f"{host} resolves to {address}, {reason}; refused (not allow-listed)")
        checked.append(address)
    return checked
