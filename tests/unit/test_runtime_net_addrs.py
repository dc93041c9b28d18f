"""Which addresses a VE may be given (net.parse_ip, net.check_free), and the name of
the traffic filter's table for a VE's host interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.core.errors import IpInUseError, UsageError
from vzpkg.runtime import net, netfilter
from vzpkg.runtime.paths import VzPaths


@pytest.mark.parametrize(("text", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("169.254.0.1", "link-local"), ("169.254.7.7/16", "link-local"),
    ("fe80::1", "link-local"), ("fe80::1234/64", "link-local"),
    ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("fec0::1", "reserved"),
    ("::ffff:10.0.0.1", "IPv4-mapped"), ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("10.0.0.0/24", "network address"), ("fd00::/64", "network address"),
    ("10.0.0.255/24", "broadcast address of 10.0.0.0/24"),
])
def test_unsafe_addresses_are_refused(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as ei:
        net.parse_ip(text)
    assert text in str(ei.value) and "cannot be a VE's address" in str(ei.value)
    assert ei.value.hint


@pytest.mark.parametrize(("text", "host"), [
    ("10.0.0.101", "10.0.0.101/32"), ("10.0.0.5/24", "10.0.0.5/24"),
    ("198.18.97.1", "198.18.97.1/32"), ("192.0.2.7", "192.0.2.7/32"),
    ("100.64.1.1", "100.64.1.1/32"), ("203.0.113.9", "203.0.113.9/32"),
    ("10.0.0.0/31", "10.0.0.0/31"), ("10.0.0.0/32", "10.0.0.0/32"),
    ("fd00::101", "fd00::101/128"), ("2001:db8::5/64", "2001:db8::5/64"),
])
def test_unicast_addresses_are_accepted(text: str, host: str) -> None:
    assert net.parse_ip(text).with_prefixlen == host


def test_invalid_text_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="invalid IP address"):
        net.parse_ip("10.0.0")


def test_an_address_of_another_ve_is_refused(tmp_path: Path) -> None:
    paths = VzPaths(tmp_path)
    paths.conf_dir.mkdir(parents=True)
    paths.conf(101).write_text('IP_ADDRESS="10.0.0.1 fd00::1/64"\n')
    paths.conf(102).write_text('IP_ADDRESS=""\n')
    with pytest.raises(IpInUseError, match=r"10\.0\.0\.1 is already VE 101's address") as ei:
        net.check_free(paths, 103, [net.parse_ip("10.0.0.9"), net.parse_ip("10.0.0.1")])
    assert ei.value.hint and "--ipdel 10.0.0.1" in ei.value.hint
    assert ei.value.exit_code == 78    # vzctl's VZ_IP_INUSE
    with pytest.raises(IpInUseError, match="fd00::1 is already VE 101's"):
        net.check_free(paths, 103, [net.parse_ip("fd00::1/128")])
    net.check_free(paths, 101, [net.parse_ip("10.0.0.1")])   # its own address
    net.check_free(paths, 103, [net.parse_ip("10.0.0.2")])
    net.check_free(paths, 103, [])


def test_a_ve_with_a_bad_line_keeps_its_address(tmp_path: Path) -> None:
    """A CTID.conf that does not load (a bad value, a layout this vzctl does not run,
    a line that does not parse) still holds its addresses against other VEs."""
    paths = VzPaths(tmp_path)
    paths.conf_dir.mkdir(parents=True)
    paths.conf(101).write_text('CPUUNITS="lots"\nVE_LAYOUT="ploop"\nthis is not a line\n'
                               'IP_ADDRESS="10.0.0.1"\n')
    with pytest.raises(IpInUseError, match=r"10\.0\.0\.1 is already VE 101's address"):
        net.check_free(paths, 102, [net.parse_ip("10.0.0.1")])


@pytest.mark.parametrize("root", ["/vz", "/srv/vz-a", "/tmp/x/vz", "/var/lib/vz2"])
def test_filter_table_follows_the_roots_tag(root: str) -> None:
    """net.py only knows the host interface name; it must find the root's table."""
    paths = VzPaths(Path(root))
    for ctid in (1, 101, 999999999):
        assert netfilter.table_for(paths.host_ifname(ctid)) == netfilter.table_name(paths.tag)
    assert netfilter.table_name("") == "vzpkg"
