"""Which URLs the fetcher may open: parse, bound for messages, resolve, classify the addresses.

User-supplied URLs (`lora_url`) must reach public addresses only: loopback, private, link-local
(cloud metadata), multicast, reserved, documentation and tunnel addresses are refused in any
spelling (`http://2130706433/`, `http://0x7f.1/`, `[::ffff:127.0.0.1]`), on every redirect hop,
before any connection; the fetcher then connects to the checked address (no second lookup).
`COGVX_ALLOW_PRIVATE_URLS` (read only by `user_url_policy`) opts out for tests and local serving:
"1" allows every address, "host[:port],..." those hosts only; unset or "0" (images) refuses.
Operator URLs (COG_WEIGHTS, COGVX_FAST_WEIGHTS) get no address check, only the URL checks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from cogvx import settings
from cogvx.errors import InputError
from cogvx.log import clip
from cogvx.settings import ALLOW_PRIVATE_ENV

MAX_URL_CHARS = 8192  # longer URLs are refused (signed CDN URLs stay well under 4 KB)
ECHO_CHARS = 200  # characters of a URL quoted in messages and logs
SCHEMES = ("http", "https")
_ON = ("1", "true", "yes", "on", "*")
_OFF = ("", "0", "false", "no", "off")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UrlError(InputError):
    """A URL is malformed or not allowed; the message names the input and a bounded prefix."""


class AddressRefused(UrlError):
    """The URL's host is (or resolves to) an address user URLs may not reach."""


def safe_url(url: str, limit: int = ECHO_CHARS) -> str:
    """The URL without query, fragment or credentials, clipped, for messages; never raises."""
    text = str(url).split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = text.partition("://")
    if sep:
        netloc, slash, path = rest.partition("/")
        text = f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"
    return clip(text, limit)  # one printable line: controls escaped


@dataclass(frozen=True)
class Split:
    """An http(s) URL's parts: scheme, host (lowercase, no brackets) and port (default filled)."""

    url: str
    scheme: str
    host: str
    port: int


def split_url(url: str, name: str) -> Split:
    """Check an http(s) URL's syntax; raise UrlError naming `name` and the URL's safe prefix."""
    label = safe_url(url)
    if len(url) > MAX_URL_CHARS:
        raise UrlError(f"{name} {label}: the URL is too long (at most {MAX_URL_CHARS} characters)")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise UrlError(
            f"{name} {label}: the URL holds spaces, control or non-ASCII characters "
            "(percent-encode them; punycode for host names)"
        )
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise UrlError(f"{name} {label}: only http:// and https:// URLs are fetched")
    bad_port = f"{name} {label}: the port is not a number from 1 to 65535"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as e:
        if "port" in str(e).lower():
            raise UrlError(bad_port) from None
        raise UrlError(f"{name} {label}: invalid IPv6 address in brackets") from None
    if not host:
        raise UrlError(f"{name} {label}: the URL has no host")
    if port == 0:
        raise UrlError(bad_port)
    return Split(url, scheme.lower(), host, port or (443 if scheme.lower() == "https" else 80))


def literal_ip(host: str) -> IP | None:
    """The address a numeric host means, in any spelling inet_aton takes (2130706433, 0x7f.1)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _nets(*rows: tuple[str, str]) -> tuple[tuple[ipaddress._BaseNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in rows)


# First match wins. IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses are
# judged by the IPv4 address they carry; IPv6 outside 2000::/3 is refused after this table.
BLOCKED = _nets(
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo tunnel"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 tunnel"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(ip: IP) -> str | None:
    """Why user URLs may not reach `ip` ('loopback', 'private', ...), or None for public ones."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # without a %zone
        inner = ip.ipv4_mapped
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            why = address_problem(inner)
            return f"{why} (as IPv6 {ip})" if why else None
    for net, why in BLOCKED:
        if ip.version == net.version and ip in net:
            return why
    if ip.version == 6 and ip not in _GLOBAL_V6:
        return "not a global unicast IPv6 address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Addresses of `host` for a TCP connection (the system resolver, /etc/hosts included)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [cast(str, info[4][0]) for info in infos]  # TCP/IP addresses are strings


def _host_entry(entry: str) -> tuple[str, int | None]:
    parts = urlsplit(f"//{entry.strip()}")
    if not parts.hostname or parts.path or parts.query:
        raise ValueError(entry)
    return parts.hostname, parts.port


@dataclass(frozen=True)
class UrlPolicy:
    """Which addresses a URL may reach: public ones, plus private ones when allowed.

    allow_private: every address; allowed_hosts: (host, port or None) pairs that may be private.
    """

    name: str = "url"
    allow_private: bool = False
    allowed_hosts: frozenset[tuple[str, int | None]] = frozenset()
    resolver: Resolver = field(default=system_resolver, compare=False)

    def addresses(self, split: Split) -> tuple[str, ...]:
        """The checked addresses to connect to (in order); raise AddressRefused otherwise."""
        ip = literal_ip(split.host)
        if ip is not None:
            found = [ip]
        else:
            try:
                found = [ipaddress.ip_address(a) for a in self.resolver(split.host, split.port)]
            except (OSError, UnicodeError, ValueError) as e:
                raise AddressRefused(f"{self.name} {safe_url(split.url)}: cannot resolve") from e
            if not found:
                raise AddressRefused(f"{self.name} {safe_url(split.url)}: no address")
        trusted = self.allow_private or bool(
            {(split.host, None), (split.host, split.port)} & self.allowed_hosts
        )
        for addr in found:
            why = None if trusted else address_problem(addr)
            if why:
                raise AddressRefused(f"{self.name} {safe_url(split.url)}: {addr} is {why}")
        return tuple(dict.fromkeys(str(a) for a in found))


def user_url_policy(name: str, resolver: Resolver | None = None) -> UrlPolicy:
    """The policy for URLs a user sends (input `name`), from COGVX_ALLOW_PRIVATE_URLS."""
    value = settings.allow_private_urls()
    kw: dict = {"resolver": resolver or system_resolver}
    if value.lower() in _ON:
        return UrlPolicy(name, allow_private=True, **kw)
    if value.lower() in _OFF:
        return UrlPolicy(name, **kw)
    try:
        hosts = frozenset(_host_entry(e) for e in value.split(",") if e.strip())
    except ValueError as e:
        raise ValueError(
            f"{ALLOW_PRIVATE_ENV}={clip(repr(value), 100)}: {clip(repr(str(e)), 100)} is not a "
            "host or host:port; use 1 (every address), 0 (public only) or host[:port],..."
        ) from None
    return UrlPolicy(name, allowed_hosts=hosts, **kw)


def fetch_failed(name: str, url: str) -> str:
    """The one message for every way a user URL could not be fetched (no port-scan oracle)."""
    return (
        f"{name} {safe_url(url)}: could not download it (the address is not public, did not "
        "answer in time, or answered with an error); give a public http(s) URL of the file"
    )
