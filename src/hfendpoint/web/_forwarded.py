"""
Trusted proxies: C{X-Forwarded-For}, C{-Proto} and C{-Host} say who the
client is and how it reached the gateway, but any client can send them;
they are believed only from the proxies the operator names
(C{--forwarded-allow-ips}), as gunicorn and uvicorn do. From anyone else
they are removed before any other part of the gateway reads them, so an
image URL can never be made to point elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.resource import Resource

from hfendpoint._twisted_private import header_table

FORWARDED_HEADERS = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
#: The schemes a URL of ours may have.
SCHEMES = (b"http", b"https")
#: A host, with its port if any: letters, digits, dots, dashes, or an IPv6
#: address in brackets.
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_networks(entries: Iterable[str]) -> Optional[tuple[Network, ...]]:
    """
    The addresses and networks of C{entries} (C{127.0.0.1}, C{10.0.0.0/8},
    C{::1}); C{None} when C{*} trusts every peer.

    @raise ValueError: for an entry that is neither.
    """
    networks = []
    for entry in entries:
        for part in entry.split(","):
            part = part.strip()
            if part == "*":
                return None
            if part:
                networks.append(ipaddress.ip_network(part, strict=False))
    return tuple(networks)


class TrustedProxies:
    """
    Which peers may tell the gateway about the client.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = parse_networks(entries)

    def trusts(self, host: str) -> bool:
        if self._networks is None:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def trusts_peer(self, peer: Any) -> bool:
        # A UNIX socket is reachable only from this machine: a local proxy.
        if isinstance(peer, UNIXAddress):
            return True
        return isinstance(peer, (IPv4Address, IPv6Address)) and self.trusts(peer.host)


class ForwardedResource(Resource):
    """
    Believes the forwarded headers from trusted proxies (the client's
    address becomes the request's, for the log and everything after),
    and removes them from anyone else.
    """

    isLeaf = True

    def __init__(self, inner: Any, proxies: TrustedProxies) -> None:
        super().__init__()
        self._inner = inner
        self._proxies = proxies

    def render(self, request: Any) -> Any:
        headers = request.requestHeaders
        table = header_table(headers)
        if b"X-Forwarded-For" in table or b"X-Forwarded-Proto" in table or b"X-Forwarded-Host" in table:
            if self._proxies.trusts_peer(request.getClientAddress()):
                self._believe(request)
            else:
                for name in FORWARDED_HEADERS:
                    headers.removeHeader(name)
        return self._inner.render(request)

    def _believe(self, request: Any) -> None:
        headers = request.requestHeaders
        proto = _last(headers.getRawHeaders(b"x-forwarded-proto"))
        if proto is not None and proto.strip().lower() in SCHEMES:
            headers.setRawHeaders(b"x-forwarded-proto", [proto.strip().lower()])
        else:
            headers.removeHeader(b"x-forwarded-proto")
        host = _last(headers.getRawHeaders(b"x-forwarded-host"))
        if host is not None and _HOST.match(host.strip()):
            headers.setRawHeaders(b"x-forwarded-host", [host.strip()])
        else:
            headers.removeHeader(b"x-forwarded-host")
        client = self._client(headers.getRawHeaders(b"x-forwarded-for") or [])
        if client is not None:
            kind = IPv6Address if ":" in client else IPv4Address
            request.client = kind("TCP", client, 0)

    def _client(self, values: list[bytes]) -> Optional[str]:
        """
        The client's address: walking the chain from the nearest proxy
        back, the first address that is not a trusted proxy (an earlier
        one could have been written by the client itself).
        """
        chain = [hop.strip().decode("latin-1") for value in values for hop in value.split(b",")]
        chain = [hop for hop in chain if hop]
        for hop in reversed(chain):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return None
            if not self._proxies.trusts(hop):
                return hop
        return chain[0] if chain else None


def _last(values: Optional[list[bytes]]) -> Optional[bytes]:
    """
    The value the nearest proxy wrote: the last one.
    """
    if not values:
        return None
    return values[-1].split(b",")[-1]
