"""The agent network policy: host parsing as curl/inet_aton do it, the range table, DNS answers."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge_common import netpolicy
from flowforge_common.netpolicy import (
    AddressClass,
    AgentNetworkMode,
    NetworkPolicyError,
    check_address,
    check_url,
    classify_address,
    parse_host,
)
from tests.workflow_svc.harness import METADATA_HOST, PUBLIC_HOST, StubResolver

PUBLIC_ONLY = AgentNetworkMode.PUBLIC_ONLY
ALLOW_PRIVATE = AgentNetworkMode.ALLOW_PRIVATE
BOTH_MODES = [PUBLIC_ONLY, ALLOW_PRIVATE]


async def no_dns(host: str) -> list[str]:
    """A resolver for hosts that must be recognised as addresses without any look-up."""
    raise AssertionError(f"{host!r} was sent to DNS")


def refusal(url: str, mode: AgentNetworkMode, resolver: netpolicy.Resolver = no_dns) -> str | None:
    """The violation message for `url`, or None when the policy lets it through."""
    try:
        asyncio.run(check_url(url, mode, resolver))
    except NetworkPolicyError as error:
        assert [v.field for v in error.violations] == ["url"]
        return error.violations[0].message
    return None


# ---------------------------------------------------------------------------------------------
# Spellings of one IPv4 address as a URL host. Each takes the address as a 32-bit integer.


def _octets(value: int) -> list[int]:
    return list(ipaddress.IPv4Address(value).packed)


def _dotted(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _ipv6_host(address: int) -> str:
    return f"[{ipaddress.IPv6Address(address)}]"


IPV4_SPELLINGS: dict[str, Callable[[int], str]] = {
    "dotted": _dotted,
    "dotted, trailing dot": lambda v: _dotted(v) + ".",
    "decimal integer": str,
    "hex integer": hex,
    "upper-case hex integer": lambda v: "0X" + format(v, "X"),
    "zero-padded hex integer": lambda v: f"0x{v:010x}",
    "octal integer": lambda v: f"0{v:o}",
    "dotted octal": lambda v: ".".join(f"0{o:o}" for o in _octets(v)),
    "dotted hex": lambda v: ".".join(f"0x{o:x}" for o in _octets(v)),
    "two parts (a.bcd)": lambda v: f"{v >> 24}.{v & 0xFFFFFF}",
    "three parts (a.b.cd)": lambda v: f"{v >> 24}.{(v >> 16) & 0xFF}.{v & 0xFFFF}",
    "three parts, hex tail": lambda v: f"{v >> 24}.{(v >> 16) & 0xFF}.0x{v & 0xFFFF:x}",
    "IPv4-mapped": lambda v: f"[::ffff:{_dotted(v)}]",
    "IPv4-mapped, hex": lambda v: _ipv6_host(0xFFFF_0000_0000 | v),
    "IPv4-translated (SIIT)": lambda v: f"[::ffff:0:{_dotted(v)}]",
    "IPv4-compatible": lambda v: f"[::{_dotted(v)}]",
    "NAT64": lambda v: f"[64:ff9b::{_dotted(v)}]",
    "6to4": lambda v: _ipv6_host((0x2002 << 112) | (v << 80) | 1),
    # Teredo: server 8.8.8.8, client address stored inverted in the low 32 bits.
    "Teredo client": lambda v: _ipv6_host((0x2001_0000 << 96) | (0x08080808 << 64) | (v ^ 0xFFFFFFFF)),
}

spellings = st.sampled_from(sorted(IPV4_SPELLINGS))


def ipv4_in(cidr: str) -> st.SearchStrategy[int]:
    """Every IPv4 address of `cidr`, as an integer."""
    network = ipaddress.IPv4Network(cidr)
    return st.integers(int(network.network_address), int(network.broadcast_address))


def url_for(value: int, spelling: str) -> str:
    return f"http://{IPV4_SPELLINGS[spelling](value)}:8080/run"


@given(value=ipv4_in("169.254.0.0/16"), spelling=spellings, mode=st.sampled_from(BOTH_MODES))
def test_every_link_local_ipv4_is_refused_in_every_spelling_and_mode(
    value: int, spelling: str, mode: AgentNetworkMode
) -> None:
    message = refusal(url_for(value, spelling), mode)
    assert message is not None
    assert "never" in message


@given(
    value=st.one_of(ipv4_in("10.0.0.0/8"), ipv4_in("172.16.0.0/12"), ipv4_in("192.168.0.0/16"), ipv4_in("127.0.0.0/8")),
    spelling=spellings,
)
def test_private_and_loopback_ipv4_follow_the_mode_in_every_spelling(value: int, spelling: str) -> None:
    url = url_for(value, spelling)
    message = refusal(url, PUBLIC_ONLY)
    assert message is not None
    assert "allow-private" in message
    assert refusal(url, ALLOW_PRIVATE) is None


@given(value=ipv4_in("100.64.0.0/10"), spelling=spellings)
def test_cgnat_follows_the_mode_except_the_metadata_address_inside_it(value: int, spelling: str) -> None:
    url = url_for(value, spelling)
    assert refusal(url, PUBLIC_ONLY) is not None
    allowed = refusal(url, ALLOW_PRIVATE) is None
    assert allowed == (value != int(ipaddress.IPv4Address("100.100.100.200")))


@given(value=ipv4_in("8.0.0.0/8"), spelling=spellings, mode=st.sampled_from(BOTH_MODES))
def test_every_public_ipv4_is_allowed_in_every_spelling_and_mode(
    value: int, spelling: str, mode: AgentNetworkMode
) -> None:
    assert refusal(url_for(value, spelling), mode) is None


@given(value=st.integers(0, 2**116 - 1), mode=st.sampled_from(BOTH_MODES))
def test_every_address_of_a_public_ipv6_block_is_allowed(value: int, mode: AgentNetworkMode) -> None:
    address = ipaddress.IPv6Address((0x2A0 << 116) | value)  # 2a00::/12, RIPE NCC unicast
    assert refusal(f"https://[{address}]/", mode) is None


@given(value=st.integers(0, 2**118 - 1), mode=st.sampled_from(BOTH_MODES))
def test_every_ipv6_link_local_address_is_refused(value: int, mode: AgentNetworkMode) -> None:
    address = ipaddress.IPv6Address((0b1111111010 << 118) | value)  # fe80::/10
    assert refusal(f"http://[{address}]/", mode) is not None


@given(value=st.integers(0, 2**32 - 1))
def test_ipv6_forms_of_an_ipv4_address_are_judged_as_that_address(value: int) -> None:
    ipv4 = ipaddress.IPv4Address(value)
    embedded = [
        ipaddress.IPv6Address(0xFFFF_0000_0000 | value),  # mapped
        ipaddress.IPv6Address((0x64_FF9B << 96) | value),  # NAT64
        ipaddress.IPv6Address(0xFFFF_0000_0000_0000 | value),  # SIIT
    ]
    assert {classify_address(address)[0] for address in embedded} == {classify_address(ipv4)[0]}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        # Boundaries of the IPv4 ranges.
        ("9.255.255.255", AddressClass.PUBLIC),
        ("10.0.0.0", AddressClass.PRIVATE),
        ("10.255.255.255", AddressClass.PRIVATE),
        ("11.0.0.0", AddressClass.PUBLIC),
        ("100.63.255.255", AddressClass.PUBLIC),
        ("100.64.0.0", AddressClass.PRIVATE),
        ("100.127.255.255", AddressClass.PRIVATE),
        ("100.128.0.0", AddressClass.PUBLIC),
        ("169.253.255.255", AddressClass.PUBLIC),
        ("169.254.0.0", AddressClass.FORBIDDEN),
        ("169.254.170.2", AddressClass.FORBIDDEN),
        ("169.255.0.0", AddressClass.PUBLIC),
        ("172.15.255.255", AddressClass.PUBLIC),
        ("172.16.0.0", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("172.32.0.0", AddressClass.PUBLIC),
        ("192.0.0.9", AddressClass.PRIVATE),  # CVE-2024-4032: is_global got this one wrong
        ("192.0.0.192", AddressClass.FORBIDDEN),  # Oracle Cloud metadata
        ("192.0.2.1", AddressClass.PRIVATE),
        ("192.167.255.255", AddressClass.PUBLIC),
        ("192.168.0.1", AddressClass.PRIVATE),
        ("198.18.0.1", AddressClass.PRIVATE),
        ("0.0.0.0", AddressClass.FORBIDDEN),
        ("0.255.255.255", AddressClass.FORBIDDEN),
        ("127.0.0.1", AddressClass.PRIVATE),
        ("223.255.255.255", AddressClass.PUBLIC),
        ("224.0.0.1", AddressClass.FORBIDDEN),
        ("239.255.255.250", AddressClass.FORBIDDEN),
        ("240.0.0.1", AddressClass.FORBIDDEN),
        ("255.255.255.255", AddressClass.FORBIDDEN),
        # IPv6.
        ("::", AddressClass.FORBIDDEN),
        ("::1", AddressClass.PRIVATE),
        ("::2", AddressClass.FORBIDDEN),  # IPv4-compatible 0.0.0.2
        ("fc00::1", AddressClass.PRIVATE),
        ("fd00:ec2::253", AddressClass.PRIVATE),
        ("fd00:ec2::254", AddressClass.FORBIDDEN),
        ("fe80::1", AddressClass.FORBIDDEN),
        ("febf:ffff::1", AddressClass.FORBIDDEN),
        ("fec0::1", AddressClass.PRIVATE),
        ("ff02::1", AddressClass.FORBIDDEN),
        ("2001:db8::1", AddressClass.PRIVATE),
        ("2001:2::1", AddressClass.PRIVATE),
        ("2001:20::1", AddressClass.PRIVATE),
        ("2606:4700:4700::1111", AddressClass.PUBLIC),
        ("2002:0808:0808::1", AddressClass.PUBLIC),  # 6to4 of 8.8.8.8
        ("2002:0a00:0001::1", AddressClass.PRIVATE),  # 6to4 of 10.0.0.1
        ("64:ff9b::10.0.0.1", AddressClass.PRIVATE),
        ("64:ff9b:1::1", AddressClass.FORBIDDEN),
        ("100::1", AddressClass.PRIVATE),
        ("4000::1", AddressClass.FORBIDDEN),
        ("8000::1", AddressClass.FORBIDDEN),
    ],
)
def test_the_range_table(address: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.ip_address(address))[0] is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x", "0.0.0.0"),
        ("0", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("1.2.3.example", None),
        ("0xg.example", None),
        ("0x1g", None),
        ("agent-1.internal", None),
    ],
)
def test_hosts_parse_as_curl_parses_them(host: str, expected: str | None) -> None:
    parsed = parse_host(host)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize("host", ["08", "1.2.3.256", "256.1.1.1", "1.2.3.4.5", "4294967296", "1..2", "09.1.1.1"])
def test_hosts_that_end_in_a_number_but_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(NetworkPolicyError, match="invalid IPv4 address"):
        parse_host(host)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://agent.example.com/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://agent.example.com:70/", "http or https"),
        ("agent.example.com/run", "http or https"),
        ("http://user:secret@agent.example.com/", "credentials"),
        ("http://agent.example.com@169.254.169.254/", "credentials"),
        ("http://agent.example.com\\@169.254.169.254/", "credentials"),
        ("http://agent.exa\tmple.com/", "printable ASCII"),
        ("http://agent.example.com/\n", "printable ASCII"),
        ("http://agent example.com/", "printable ASCII"),
        ("http://exämple.com/", "printable ASCII"),
        ("http://ex%61mple.com/", "invalid host name"),
        ("http://-agent.example.com/", "invalid host name"),
        ("http:///run", "must name a host"),
        ("http://agent.example.com:0/", "port 0"),
        ("http://agent.example.com:65536/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone identifier"),
        ("https://agent.example.com/" + "a" * 2100, "at most 2048"),
    ],
)
def test_malformed_urls_are_refused_before_any_lookup(url: str, reason: str) -> None:
    for mode in BOTH_MODES:
        message = refusal(url, mode)
        assert message is not None, url
        assert reason in message


def test_names_are_resolved_and_every_address_checked() -> None:
    resolver = StubResolver()
    assert refusal(f"https://{PUBLIC_HOST}/run", PUBLIC_ONLY, resolver) is None
    for mode in BOTH_MODES:
        assert "metadata" in (refusal(f"http://{METADATA_HOST}/", mode, resolver) or "")
        assert "169.254.169.254" in (refusal("http://mixed.example.com/", mode, resolver) or "")
    assert refusal("http://internal.example.com/", PUBLIC_ONLY, resolver) is not None
    assert refusal("http://internal.example.com/", ALLOW_PRIVATE, resolver) is None
    assert resolver.lookups.count("mixed.example.com") == 2


def test_unresolvable_names_are_refused() -> None:
    resolver = StubResolver({"garbage.example.com": ["not-an-address"], "empty.example.com": []})
    assert "does not resolve" in (refusal("http://nxdomain.example.com/", ALLOW_PRIVATE, resolver) or "")
    assert "no usable address" in (refusal("http://garbage.example.com/", ALLOW_PRIVATE, resolver) or "")
    assert "no usable address" in (refusal("http://empty.example.com/", ALLOW_PRIVATE, resolver) or "")


def test_a_resolver_that_hangs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hanging(host: str) -> list[str]:
        await asyncio.sleep(10)
        return ["93.184.216.34"]

    monkeypatch.setattr(netpolicy, "RESOLVE_TIMEOUT_SECONDS", 0.01)
    assert "does not resolve" in (refusal("http://slow.example.com/", ALLOW_PRIVATE, hanging) or "")


def test_resolved_zone_ids_are_ignored_for_the_check() -> None:
    resolver = StubResolver({"ll.example.com": ["fe80::1%eth0"]})
    assert "link-local" in (refusal("http://ll.example.com/", ALLOW_PRIVATE, resolver) or "")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "agent.localhost"])
def test_localhost_names_are_loopback_without_asking_dns(host: str) -> None:
    url = f"http://{host}:9000/run"
    assert "loopback" in (refusal(url, PUBLIC_ONLY) or "")
    assert refusal(url, ALLOW_PRIVATE) is None


def test_names_resolving_to_loopback_follow_the_private_rule() -> None:
    resolver = StubResolver({"lo.example.com": ["127.0.0.1", "::1"]})
    assert "loopback" in (refusal("http://lo.example.com/", PUBLIC_ONLY, resolver) or "")
    assert refusal("http://lo.example.com/", ALLOW_PRIVATE, resolver) is None


def test_the_violation_can_name_another_field() -> None:
    with pytest.raises(NetworkPolicyError) as caught:
        asyncio.run(check_url("http://169.254.169.254/", ALLOW_PRIVATE, no_dns, field="health_url"))
    assert [v.field for v in caught.value.violations] == ["health_url"]
    assert caught.value.message.startswith("health_url ")


@pytest.mark.parametrize(
    ("address", "public_only", "allow_private"),
    [
        ("93.184.216.34", True, True),
        ("10.0.0.7", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("169.254.169.254", False, False),
        ("::ffff:169.254.169.254", False, False),
        ("fe80::1%eth0", False, False),
        (ipaddress.ip_address("fd00:ec2::254"), False, False),
    ],
)
def test_check_address_judges_the_connected_address(
    address: str | netpolicy.IPAddress, public_only: bool, allow_private: bool
) -> None:
    for mode, allowed in [(PUBLIC_ONLY, public_only), (ALLOW_PRIVATE, allow_private)]:
        if allowed:
            check_address(address, mode)
        else:
            with pytest.raises(NetworkPolicyError):
                check_address(address, mode)


def test_check_address_refuses_what_is_not_an_address() -> None:
    with pytest.raises(NetworkPolicyError, match="not an IP address"):
        check_address("agent.example.com", ALLOW_PRIVATE)


@given(value=st.integers(0, 2**32 - 1))
def test_check_address_and_check_url_agree_on_ipv4(value: int) -> None:
    dotted = _dotted(value)
    for mode in BOTH_MODES:
        try:
            check_address(dotted, mode)
            by_address = True
        except NetworkPolicyError:
            by_address = False
        assert by_address == (refusal(f"http://{dotted}/", mode) is None)
