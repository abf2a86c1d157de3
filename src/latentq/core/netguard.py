"""Whether a URL is a permitted webhook destination.

A job's ``callback_url`` makes a worker (inside the deployment's network) POST
to an address a client chose. Without a check that is a server-side request
forgery: ``http://127.0.0.1:6379/`` talks to Redis, ``169.254.169.254`` to a
cloud's metadata service. So only public (globally routable, unicast)
addresses are permitted by default; ``LATENTQ_WEBHOOK_ALLOW`` lists hosts and
CIDR networks that are permitted all the same (a receiver on the internal
network, or 127.0.0.1 in tests).

The check runs at submit (so the client hears 422 at once) and again right
before each delivery on the resolved addresses, which the sender then connects
to, so a DNS answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import InvalidRequest

__all__ = ["Address", "Destination", "WebhookPolicy", "forbidden_reason", "host_port"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FIELD = "callback_url"
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64): it is where packets really go."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: Address) -> str | None:
    """Why a webhook may not go to ``address`` by default (None: a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_v4(address)
        if inner is not None:  # judged by where it leads (Python calls all of ::ffff:0:0/96 "reserved")
            return forbidden_reason(inner)
    for reason in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{reason}"):
            return reason.replace("_", "-")
    if not address.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation ranges
        return "not globally routable"
    return None


@dataclass(frozen=True)
class Destination:
    """A checked webhook target: where to connect (``addresses``), and the URL's own host for Host / SNI."""

    url: str
    host: str
    port: int
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class WebhookPolicy:
    """Public addresses, plus the allowed hosts and networks (``LATENTQ_WEBHOOK_ALLOW``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> WebhookPolicy:
        """Each entry a host name, an IP address or a CIDR network; blanks are skipped."""
        hosts, networks = set(), []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_address(self, address: Address) -> bool:
        if any(address.version == net.version and address in net for net in self.networks):
            return True
        return forbidden_reason(address) is None

    def check(self, url: str, *, resolve: bool = True) -> Destination:
        """The URL's destination, every address checked; InvalidRequest(field="callback_url") if refused.

        ``resolve=False`` checks literal addresses only (no DNS): a host name passes with no addresses.
        """
        host, port = host_port(url)
        literal = _literal(host)
        if literal is None and host in self.hosts:  # an allowed name: trusted whatever it resolves to
            return Destination(url, host, port, _resolve(host, port) if resolve else ())
        if literal is not None:
            addresses: tuple[Address, ...] = (literal,)
        elif resolve:
            addresses = _resolve(host, port)
        else:
            return Destination(url, host, port, ())
        for address in addresses:
            if not self.allows_address(address):
                named = "" if literal is not None else f" (which {host} resolves to)"
                raise InvalidRequest(
                    f"callback_url may not point at {address}{named}: a {forbidden_reason(address)} address; "
                    "list it in LATENTQ_WEBHOOK_ALLOW to permit it", field=FIELD)  # fmt: skip
        return Destination(url, host, port, addresses)


def host_port(url: str) -> tuple[str, int]:
    """A webhook URL's host and port; InvalidRequest(field="callback_url") if it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"callback_url is not a valid URL: {exc}", field=FIELD) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("callback_url must be an http(s) URL", field=FIELD)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidRequest("callback_url has no host", field=FIELD)
    return host, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone ("%eth0") names no other address
    except ValueError:
        pass
    try:  # inet_aton's legacy forms ("127.1", "0x7f000001", "2130706433") reach the same address
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _resolve(host: str, port: int) -> tuple[Address, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"callback_url host {host!r} does not resolve: {exc}", field=FIELD) from None
    found: dict[Address, None] = {}
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    if not found:
        raise InvalidRequest(f"callback_url host {host!r} has no IP address", field=FIELD)
    return tuple(found)
