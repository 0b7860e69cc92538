"""Fetching a URL a client gave (an input image, with FRESCO_ALLOW_IMAGE_URLS), or posting to one (a
webhook), guarded.

Plain HTTP only (httpx): the API uses it for input images, the workers for adapter files, the webhook
dispatcher for deliveries; anything else that reaches a client's URL goes through it too. A server
that fetches URLs for anyone is a door into its own network, so:
- only the allowed schemes (https by default);
- the host is resolved here and every address must be public: no loopback, private, link-local
  (169.254.169.254, the cloud metadata service, is link-local), shared, multicast or reserved ones;
  a setting may exempt networks from that rule, but never the cloud metadata addresses (`METADATA`);
- the connection goes to the address that was checked (pinned, with the original Host and TLS SNI),
  so a DNS answer that changes between check and connect (rebinding) changes nothing;
- redirects are followed by hand, a few at most, each new URL checked the same way (a POST follows none);
- the body is capped at a byte limit while it streams, and the whole fetch by a time limit.
Each request checks its URL anew, so a host that later resolves to a private address is refused then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

MAX_REDIRECTS = 3


class FetchRejected(ValueError):
    """The URL breaks a rule or could not be fetched; the message is safe to show (never quotes it)."""


class Unreachable(FetchRejected):
    """The URL keeps the rules, but its host did not resolve, connect or answer: it may later."""


class TimedOut(Unreachable):
    """No answer within the time limit."""


# Allowed networks that exempt every address from the public-only rule (local development and tests).
ANY_ADDRESS = ["0.0.0.0/0", "::/0"]

# Public-looking ranges that are not public either.
BLOCKED_EXTRA = [ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "192.0.0.0/24", "198.18.0.0/15",  # IETF protocol assignments, benchmarking
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64: would reach IPv4 behind the gateway
)]


# The cloud metadata services (instance credentials live there): refused whatever the settings allow.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack...
    "169.254.170.2",  # AWS ECS/Fargate task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure's WireServer (a public-looking address reachable only inside Azure)
))
# IPv6 prefixes whose last 32 bits name an IPv4 address (NAT64, the deprecated IPv4-compatible form).
EMBEDS_IPV4 = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96")]

METADATA_REFUSED = "URL must not point to a cloud metadata address"
NOT_PUBLIC = "URL must point to a public address"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64, IPv4-compatible), if any."""
    mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if mapped is None and any(ip in net for net in EMBEDS_IPV4) and int(ip) > 1:
        mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return mapped


def is_metadata(address: str) -> bool:
    """Whether `address` (an IP address) is, or stands for, a cloud metadata address."""
    ip = ipaddress.ip_address(address)
    if ip in METADATA:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = _embedded_ipv4(ip)
        return mapped is not None and mapped in METADATA
    return False


def address_problem(address: str, allowed: list = ()) -> str | None:
    """Why a guarded request may not connect to `address` (a message that never quotes it), or None:
    a cloud metadata address, always; one that is not public, unless it is in an `allowed` network."""
    if is_metadata(address):
        return METADATA_REFUSED
    return None if is_public(address, allowed) else NOT_PUBLIC


def is_public(address: str, allowed: list = ()) -> bool:
    """Whether `address` is public or in an `allowed` network (`address_problem` also refuses metadata)."""
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


def literal_address_problem(host: str | None) -> str | None:
    """Why a URL whose host is `host` is refused before anything resolves: a literal cloud metadata
    address (names are resolved and checked when the URL is reached)."""
    try:
        return METADATA_REFUSED if host and is_metadata(host) else None
    except ValueError:  # a name, not an address
        return None


async def _public_address(host: str, port: int, allowed: list) -> str:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise Unreachable("URL host does not resolve") from None
    addresses = {info[4][0] for info in infos}
    if not addresses:
        raise FetchRejected(NOT_PUBLIC)
    problems = [p for p in (address_problem(a, allowed) for a in addresses) if p]
    if problems:
        raise FetchRejected(METADATA_REFUSED if METADATA_REFUSED in problems else problems[0])
    return sorted(addresses)[0]


@dataclass(frozen=True)
class Pinned:
    """A checked URL, ready to connect to the address that was checked: `url` names that address, and
    the original host travels as the Host header and TLS SNI (which the certificate is checked against)."""

    url: str
    host: str
    sni: str

    def request(self, client: httpx.AsyncClient, method: str, headers: dict, content: bytes | None = None):
        return client.build_request(method, self.url, headers={"Host": self.host, **headers}, content=content,
                                    extensions={"sni_hostname": self.sni})


async def pin(url: str, schemes: list[str], allowed: list) -> Pinned:
    """Check `url` against the rules (scheme, no credentials, a host whose every address is public or
    in `allowed`) and pin it to one checked address; FetchRejected (Unreachable when it does not resolve)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRejected("URL is not valid") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise FetchRejected(f"URL scheme must be one of {schemes}")
    if parts.username or parts.password:
        raise FetchRejected("URL must not carry credentials")
    address = await _public_address(parts.hostname, port, allowed)
    pinned_host = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{pinned_host}:{port}", parts.path or "/", parts.query, ""))
    return Pinned(pinned, parts.netloc.rsplit("@", 1)[-1], parts.hostname)


async def check_url(url: str, *, schemes: list[str], allowed_networks: list[str], timeout_s: float) -> None:
    """FetchRejected when `url` breaks the rules or its host does not resolve (within `timeout_s`) to
    allowed addresses: what a request that names a URL to reach later is validated with."""
    allowed = [ipaddress.ip_network(n) for n in allowed_networks]
    try:
        await asyncio.wait_for(pin(url, schemes, allowed), timeout_s)
    except asyncio.TimeoutError:
        raise TimedOut(f"URL host did not resolve within {timeout_s:g} s") from None


def guarded_client(**options) -> httpx.AsyncClient:
    """The HTTP client for pinned requests: no redirects followed for it, no proxy from the environment,
    certificates verified."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, verify=True, **options)


async def post_public_url(client: httpx.AsyncClient, url: str, content: bytes, headers: dict, *,
                          schemes: list[str], allowed_networks: list[str], timeout_s: float) -> httpx.Response:
    """POST `content` to `url` once, at its checked address, within `timeout_s` (resolving included);
    a redirect is an answer like any other, never followed. The response, closed (its body unread).
    `client`: a `guarded_client` that keeps no connection alive, so no request ever rides a connection
    made for another host's name at the same address."""
    allowed = [ipaddress.ip_network(n) for n in allowed_networks]
    try:
        return await asyncio.wait_for(_post(client, url, content, headers, schemes, allowed), timeout_s)
    except asyncio.TimeoutError:
        raise TimedOut(f"URL did not answer within {timeout_s:g} s") from None


async def _post(client, url: str, content: bytes, headers: dict, schemes: list[str], allowed: list) -> httpx.Response:
    target = await pin(url, schemes, allowed)
    try:
        response = await client.send(target.request(client, "POST", headers, content), stream=True)
    except httpx.TimeoutException:
        raise TimedOut("URL did not answer in time") from None
    except httpx.HTTPError:
        raise Unreachable("URL could not be reached") from None
    await response.aclose()
    return response


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
    async with guarded_client() as client:
        for _ in range(MAX_REDIRECTS + 1):
            target = await pin(url, schemes, allowed)
            try:
                response = await client.send(target.request(client, "GET", {"Accept": accept}), stream=True)
            except httpx.HTTPError:
                raise Unreachable("URL could not be fetched") from None
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
                raise Unreachable("URL could not be fetched") from None
            finally:
                await response.aclose()
    raise FetchRejected(f"URL redirected more than {MAX_REDIRECTS} times")
