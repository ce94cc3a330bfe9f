"""Who is at the other end of an HTTP request: the client address, and whether it is local.

Behind a reverse proxy (nginx, a Hugging Face Space) every request comes from the proxy, and the
visitor's address is in ``X-Forwarded-For``. That header is written by whoever sends the
request, so it is believed only when the connecting peer is one of ``[web] trusted_proxies``;
then the address is the right-most one in the chain that is not itself a trusted proxy (the
left part of the chain is the visitor's own claim). A request that carries forwarding headers
through an untrusted peer is never treated as local: a proxy on the same host would otherwise
make every visitor look like loopback.

Everything here is total: malformed addresses and headers give an answer, never an exception.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDING = ("x-forwarded-for", "forwarded", "x-real-ip")
_MAX_HOPS = 32


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``[web] trusted_proxies`` as networks (validated by the config loader; bad ones skipped)."""
    out: list[Network] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Client:
    """The request's client: its address (text, ``unknown`` when there is none) and locality."""

    address: str
    local: bool


def resolve_client(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> Client:
    """The client of a request from ``peer`` with ``headers`` (lower-case names)."""
    peer_ip = _address(peer or "")
    if peer_ip is None:
        return Client("unknown", False)
    forwarded = any(headers.get(name) for name in _FORWARDING)

    def is_trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == net.version and ip in net for net in trusted)

    if not is_trusted(peer_ip):
        return Client(str(peer_ip), peer_ip.is_loopback and not forwarded)
    header = (headers.get("x-forwarded-for") or "").strip()
    chain = header.split(",")[-_MAX_HOPS:] if header else []
    client_ip = peer_ip
    for hop in reversed(chain):
        ip = _address(hop)
        if ip is None:  # garbage in the chain: the last address we could trust, never local
            return Client(str(client_ip), False)
        client_ip = ip
        if not is_trusted(ip):
            break
    return Client(str(client_ip), client_ip.is_loopback)
