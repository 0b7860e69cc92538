"""Fetching a URL a client gave (an input image, with FRESCO_ALLOW_IMAGE_URLS), guarded.

Plain HTTP only (httpx): the API uses it for input images, and anything else that fetches a
client's URL goes through it too. A server that fetches URLs for anyone is a door into its own
network, so:
- only the allowed schemes (https by default);
- the host is resolved here and every address must be public: no loopback, private, link-local
  (169.254.169.254, the cloud metadata service, is link-local), shared, multicast or reserved ones;
- the connection goes to the address that was checked (pinned, with the original Host and TLS SNI),
  so a DNS answer that changes between check and connect (rebinding) changes nothing;
- redirects are followed by hand, a few at most, each new URL checked the same way;
- the body is capped at a byte limit while it streams, and the whole fetch by a time limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

MAX_REDIRECTS = 3


class FetchRejected(ValueError):
    """The URL breaks a rule or could not be fetched; the message is safe to show (never quotes it)."""

# Public-looking ranges that are not public either.
BLOCKED_EXTRA = [ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "192.0.0.0/24", "198.18.0.0/15",  # IETF protocol assignments, benchmarking
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64: would reach IPv4 behind the gateway
)]


def is_public(address: str, allowed: list = ()) -> bool:
    ip = ipaddress.ip_address(address)
    if any(ip in net for net in allowed):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None:
            return is_public(str(mapped), allowed)
    if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global):
        return False
    return not any(ip in net for net in BLOCKED_EXTRA)


async def _public_address(host: str, port: int, allowed: list) -> str:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise FetchRejected("URL host does not resolve") from None
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(is_public(a, allowed) for a in addresses):
        raise FetchRejected("URL must point to a public address")
    return sorted(addresses)[0]


async def fetch_public_url(url: str, *, schemes: list[str], allowed_networks: list[str], max_bytes: int,
                           timeout_s: float, accept: str = "*/*") -> bytes:
    """The body at `url`, fetched only from public addresses (or `allowed_networks`), at most
    `max_bytes`, within `timeout_s`; FetchRejected otherwise."""
    allowed = [ipaddress.ip_network(n) for n in allowed_networks]
    try:
        return await asyncio.wait_for(_fetch(url, schemes, allowed, max_bytes, accept), timeout_s)
    except asyncio.TimeoutError:
        raise FetchRejected(f"URL took longer than {timeout_s:g} s to fetch") from None


async def _fetch(url: str, schemes: list[str], allowed: list, max_bytes: int, accept: str) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, verify=True) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in schemes or not parts.hostname:
                raise FetchRejected(f"URL scheme must be one of {schemes}")
            if parts.username or parts.password:
                raise FetchRejected("URL must not carry credentials")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await _public_address(parts.hostname, port, allowed)
            pinned_host = f"[{address}]" if ":" in address else address
            pinned = urlunsplit((parts.scheme, f"{pinned_host}:{port}", parts.path or "/", parts.query, ""))
            request = client.build_request("GET", pinned, headers={"Host": parts.netloc.rsplit("@", 1)[-1],
                                                                  "Accept": accept},
                                           extensions={"sni_hostname": parts.hostname})
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError:
                raise FetchRejected("URL could not be fetched") from None
            try:
                if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FetchRejected(f"URL answered HTTP {response.status_code}")
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise FetchRejected(f"is larger than {max_bytes} bytes")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchRejected(f"is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
            except httpx.HTTPError:
                raise FetchRejected("URL could not be fetched") from None
            finally:
                await response.aclose()
    raise FetchRejected(f"URL redirected more than {MAX_REDIRECTS} times")
