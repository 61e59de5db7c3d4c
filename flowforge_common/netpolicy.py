"""Agent network policy: which addresses FlowForge may call, checked at registration and per call.

The policy is a table of explicitly listed networks, not `ipaddress.is_private`/`is_global`
(those answered wrongly for some ranges before CVE-2024-4032 was fixed). An address is classified
by the most specific network that contains it, so a small always-forbidden network (a cloud
metadata address) can sit inside a larger private one, and a private network inside a larger
reserved one. IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, SIIT,
6to4, Teredo) are judged by the IPv4 address they reach too.

Host names are parsed the way `inet_aton` and curl (the WHATWG URL host parser) parse them, so
`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376` and `169.254.43518` are all 169.254.169.254;
other names are resolved and every address they resolve to must pass.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from flowforge_common.errors import FieldViolation, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str], Awaitable[Sequence[str]]]
"""Resolves a host name to the IP addresses (as text) a connection could reach."""

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 5.0
ALLOWED_SCHEMES = frozenset({"http", "https"})


class AgentNetworkMode(enum.StrEnum):
    """How far agents may live from FlowForge on the network (`FLOWFORGE_AGENT_NETWORK`)."""

    PUBLIC_ONLY = "public-only"
    """Production default: only publicly routable addresses."""
    ALLOW_PRIVATE = "allow-private"
    """Also private, CGNAT, loopback and other special-use ranges (`make run`, on-premises)."""


class AddressClass(enum.IntEnum):
    """How the policy treats an address; a higher value is more restrictive."""

    PUBLIC = 0
    PRIVATE = 1
    FORBIDDEN = 2


class NetworkPolicyError(ValidationError):
    """A URL or address is refused by the agent network policy (422 with a field violation)."""


def _table(entries: Sequence[tuple[str, AddressClass, str]]) -> list[tuple[IPNetwork, AddressClass, str]]:
    # Most specific first, so that the first match is the longest-prefix match.
    parsed = [(ipaddress.ip_network(cidr), cls, label) for cidr, cls, label in entries]
    return sorted(parsed, key=lambda entry: entry[0].prefixlen, reverse=True)


_F = AddressClass.FORBIDDEN
_P = AddressClass.PRIVATE

# Sources: the IANA IPv4 and IPv6 Special-Purpose Address Registries, plus the metadata
# endpoints of the major clouds. Anything not listed is public.
_NETWORKS = _table(
    [
        # Always refused: link-local and cloud metadata, "this network", multicast, reserved.
        ("0.0.0.0/8", _F, "'this network'"),  # connecting to 0.0.0.0 reaches the local host
        ("169.254.0.0/16", _F, "link-local / cloud metadata"),
        ("100.100.100.200/32", _F, "cloud metadata (Alibaba Cloud)"),
        ("192.0.0.192/32", _F, "cloud metadata (Oracle Cloud)"),
        ("224.0.0.0/4", _F, "multicast"),
        ("240.0.0.0/4", _F, "reserved / broadcast"),
        ("::/128", _F, "unspecified"),
        ("fe80::/10", _F, "link-local"),
        ("fd00:ec2::254/128", _F, "cloud metadata (AWS IPv6)"),
        ("ff00::/8", _F, "multicast"),
        # IPv6 outside 2000::/3 is not allocated for global unicast; the special-use blocks
        # inside these three ranges are listed separately with longer prefixes.
        ("::/3", _F, "reserved"),
        ("4000::/2", _F, "reserved"),
        ("8000::/1", _F, "reserved"),
        # Local-use NAT64 (RFC 8215) embeds IPv4 at an operator-chosen position that cannot be
        # recovered reliably, so the address behind it cannot be checked.
        ("64:ff9b:1::/48", _F, "local-use NAT64"),
        # Refused unless allow-private: private, shared (CGNAT), loopback and special use.
        ("10.0.0.0/8", _P, "private"),
        ("100.64.0.0/10", _P, "shared address space (CGNAT)"),
        ("127.0.0.0/8", _P, "loopback"),
        ("172.16.0.0/12", _P, "private"),
        ("192.0.0.0/24", _P, "IETF protocol assignments"),
        ("192.0.2.0/24", _P, "documentation"),
        ("192.88.99.0/24", _P, "6to4 relay anycast"),
        ("192.168.0.0/16", _P, "private"),
        ("198.18.0.0/15", _P, "benchmarking"),
        ("198.51.100.0/24", _P, "documentation"),
        ("203.0.113.0/24", _P, "documentation"),
        ("::1/128", _P, "loopback"),
        ("100::/64", _P, "discard-only"),
        ("2001:2::/48", _P, "benchmarking"),
        ("2001:10::/28", _P, "ORCHID"),
        ("2001:20::/28", _P, "ORCHIDv2"),
        ("2001:db8::/32", _P, "documentation"),
        ("3fff::/20", _P, "documentation"),
        ("5f00::/16", _P, "segment routing (SRv6) SIDs"),
        ("fc00::/7", _P, "unique local"),
        ("fec0::/10", _P, "site-local (deprecated)"),
    ]
)

# IPv6 prefixes whose low 32 bits are an IPv4 address that the packet actually reaches (or that
# a stack may translate to): the IPv6 address is judged as that IPv4 address alone.
_IPV4_TRANSLATION_PREFIXES = [
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    ipaddress.IPv6Network("64:ff9b::/96"),  # well-known NAT64
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated)
]
# `::` and `::1` sit inside ::/96 but are the unspecified and loopback addresses, not IPv4.
_NOT_IPV4_COMPATIBLE = {ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")}

# A DNS host name (underscores tolerated: container service names use them); IDNs must be given
# in their ASCII (punycode) form so that look-alike Unicode cannot smuggle in another name.
_HOSTNAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LOCALHOST_SUFFIX = ".localhost"


def classify_address(ip: IPAddress) -> tuple[AddressClass, str]:
    """The policy class of one address and a short label of the range that decided it."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _translated_ipv4(ip)
        if embedded is not None:
            return classify_address(embedded)
    verdict = _lookup(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        # 6to4 and Teredo addresses are globally routed themselves but tunnel to an IPv4 host.
        for tunnelled in _tunnelled_ipv4(ip):
            inner = classify_address(tunnelled)
            if inner[0] > verdict[0]:
                verdict = inner
    return verdict


def check_address(ip: str | IPAddress, mode: AgentNetworkMode, *, field: str = "url") -> None:
    """Refuses an address the policy does not allow in `mode`.

    The execution engine calls this on the address it actually connected to, which defeats DNS
    rebinding between registration and call time."""
    address = _parse_ip(ip) if isinstance(ip, str) else ip
    if address is None:
        raise _refused(field, f"points at {ip!r}, which is not an IP address")
    _check_addresses(str(address), [address], mode, field)


async def check_url(url: str, mode: AgentNetworkMode, resolver: Resolver | None = None, *, field: str = "url") -> None:
    """Refuses a URL FlowForge must not call: a scheme other than http/https, userinfo, a
    malformed host, or a host any of whose addresses the policy refuses in `mode`.

    `resolver` defaults to the system resolver; tests pass a stub so that no lookup leaves the
    machine. Violations name `field` (e.g. `url`, `health_url`)."""
    host = check_url_offline(url, mode, field=field)
    if host is not None:
        _check_addresses(host, await _resolve(host, resolver or resolve_host, field), mode, field)


def check_url_offline(url: str, mode: AgentNetworkMode, *, field: str = "url") -> str | None:
    """What `check_url` checks without DNS. Returns the host name still to resolve, or None
    when the host is an address (or `localhost`), already checked here.

    At call time this plus `PolicyResolver` on the connection is the whole check: aiohttp does
    not consult a resolver for an address literal, and resolves names through it."""
    host = _host_of(url, field)
    name = host.removesuffix(".")
    if name == "localhost" or name.endswith(_LOCALHOST_SUFFIX):
        # RFC 6761: these names are loopback whatever a resolver says.
        _check_addresses(host, [ipaddress.IPv4Address("127.0.0.1")], mode, field)
        return None
    literal = parse_host(host, field=field)
    if literal is not None:
        _check_addresses(host, [literal], mode, field)
        return None
    return host


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that answers only addresses the agent network policy allows: the
    address checked is the address connected to, so a DNS answer that changes between a check
    and the connection (rebinding) gains nothing."""

    def __init__(self, network: AgentNetworkMode, resolver: Resolver | None = None, *, field: str = "url") -> None:
        self._network = network
        self._resolver = resolver or resolve_host
        self._field = field

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Every allowed address of `host` in `family`; NetworkPolicyError when any address of
        the answer is refused (one bad address is enough to distrust the name)."""
        name = host.removesuffix(".")
        # RFC 6761, as in check_url: these names are loopback whatever a resolver says.
        answers = (
            ["127.0.0.1"] if name == "localhost" or name.endswith(_LOCALHOST_SUFFIX) else await self._resolver(host)
        )
        results: list[ResolveResult] = []
        for answer in answers:
            text = answer.split("%", 1)[0]  # a zone id names an interface, not another address
            check_address(text, self._network, field=self._field)
            address = ipaddress.ip_address(text)
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family in (socket.AF_UNSPEC, address_family):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=str(address),
                        port=port,
                        family=address_family,
                        proto=0,
                        flags=socket.AI_NUMERICHOST,
                    )
                )
        if not results:
            raise OSError(f"{host} has no address to connect to")
        return results

    async def close(self) -> None:
        """Nothing to release."""


async def resolve_host(host: str) -> list[str]:
    """Every address the system resolver gives for `host` (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def parse_host(host: str, *, field: str = "url") -> IPAddress | None:
    """The IP address a URL host denotes, or None when it is a name to resolve.

    IPv4 follows the WHATWG URL standard (what curl and browsers do, and a superset of
    `inet_aton`): one to four dot-separated parts, each decimal, octal (leading `0`) or hex
    (`0x`), the last part filling the remaining bytes. A host whose last label is numeric but
    does not parse is refused rather than looked up, as WHATWG does."""
    if ":" in host:
        if "%" in host:
            # Zone ids only make sense for link-local addresses, which are refused anyway.
            raise _refused(field, "must not use an IPv6 zone identifier")
        address = _parse_ip(host)
        if address is None:
            raise _refused(field, f"has an invalid IPv6 address {host!r}")
        return address
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # a trailing dot ends a fully qualified name, it is not a part
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    value = _parse_ipv4_parts(labels)
    if value is None:
        raise _refused(field, f"has an invalid IPv4 address {host!r}")
    return ipaddress.IPv4Address(value)


def _parse_ipv4_parts(labels: list[str]) -> int | None:
    if len(labels) > 4:
        return None
    numbers = [_parse_ipv4_number(label) for label in labels]
    if any(number is None for number in numbers):
        return None
    parts = [number for number in numbers if number is not None]
    if any(part > 255 for part in parts[:-1]) or parts[-1] >= 256 ** (5 - len(parts)):
        return None
    value = parts[-1]
    for index, part in enumerate(parts[:-1]):
        value += part << (8 * (3 - index))
    return value


def _parse_ipv4_number(label: str) -> int | None:
    if label.startswith("0x"):
        digits, base = label[2:], 16
    elif len(label) > 1 and label.startswith("0"):
        digits, base = label[1:], 8
    else:
        digits, base = label, 10
    if digits == "":
        # `0x` alone is zero in WHATWG; an empty label (`1..2`) is not a number.
        return 0 if base == 16 else None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _host_of(url: str, field: str) -> str:
    if len(url) > MAX_URL_LENGTH:
        raise _refused(field, f"must be at most {MAX_URL_LENGTH} characters")
    # urlsplit silently drops tabs and newlines and tolerates spaces: refuse them up front so
    # the URL checked is the URL called.
    if any(not ("\x21" <= char <= "\x7e") for char in url):
        raise _refused(field, "must be printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed lazily: reading it validates the range
    except ValueError as exc:
        raise _refused(field, f"is not a valid URL ({exc})") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise _refused(field, "must be an http or https URL")
    if "@" in parts.netloc:
        raise _refused(field, "must not contain credentials (user:password@); use auth_config")
    host = parts.hostname or ""
    if not host:
        raise _refused(field, "must name a host")
    if ":" not in host and not _HOSTNAME.match(host.removesuffix(".")):
        raise _refused(field, f"has an invalid host name {host!r}")
    if port == 0:
        raise _refused(field, "must not use port 0")
    return host


async def _resolve(host: str, resolver: Resolver, field: str) -> list[IPAddress]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            answers = await resolver(host)
    except (OSError, TimeoutError) as exc:
        # Fail closed: an address that cannot be seen cannot be checked.
        raise _refused(field, f"has a host that does not resolve: {host!r}") from exc
    addresses = [_parse_ip(answer.split("%", 1)[0]) for answer in answers]
    resolved = [address for address in addresses if address is not None]
    if not resolved or len(resolved) != len(addresses):
        raise _refused(field, f"has a host that resolves to no usable address: {host!r}")
    return resolved


def _check_addresses(host: str, addresses: Sequence[IPAddress], mode: AgentNetworkMode, field: str) -> None:
    for address in addresses:
        refusal = _refusal(address, mode)
        if refusal is not None:
            # Spell out the address when the host is a name or an unusual spelling of one.
            shown = host if _parse_ip(host) == address else f"{host} ({address})"
            raise _refused(field, f"points at {shown}, {refusal}")


def _refusal(address: IPAddress, mode: AgentNetworkMode) -> str | None:
    address_class, label = classify_address(address)
    if address_class is AddressClass.FORBIDDEN:
        return f"in the {label} range, which agents may never use"
    if address_class is AddressClass.PRIVATE and mode is not AgentNetworkMode.ALLOW_PRIVATE:
        return f"in the {label} range, which agents may use only when FLOWFORGE_AGENT_NETWORK=allow-private"
    return None


def _lookup(ip: IPAddress) -> tuple[AddressClass, str]:
    for network, address_class, label in _NETWORKS:
        if ip.version == network.version and ip in network:
            return address_class, label
    return AddressClass.PUBLIC, "public"


def _translated_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _NOT_IPV4_COMPATIBLE:
        return None
    for prefix in _IPV4_TRANSLATION_PREFIXES:
        if ip in prefix:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    tunnelled = [ip.sixtofour] if ip.sixtofour is not None else []
    if ip.teredo is not None:
        tunnelled.extend(ip.teredo)
    return tunnelled


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _refused(field: str, message: str) -> NetworkPolicyError:
    # `message` completes a sentence that starts with the field name, e.g. "url must be ...".
    return NetworkPolicyError(f"{field} {message}", [FieldViolation(field, message)])
