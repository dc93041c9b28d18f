"""NAMESERVER="inherit" and SEARCHDOMAIN="inherit": the host's resolv.conf values."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.core.errors import ConfigError
from vzpkg.runtime import derived, params
from vzpkg.runtime.config import VeConfig


def test_the_hosts_servers_and_search_domains(tmp_path: Path) -> None:
    etc = tmp_path / "resolv.conf"
    etc.write_text("# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1  # upstream\n"
                   "nameserver fe80::1%eth0\nnameserver 192.0.2.1\noptions edns0\n"
                   "domain old.example\nsearch a.example b.example bad_name\n")
    assert derived.host_dns((etc,)) == (["192.0.2.1", "fe80::1"], ["a.example", "b.example"])


def test_only_a_loopback_resolver_falls_back_to_systemd_resolveds_list(tmp_path: Path) -> None:
    stub = tmp_path / "stub.conf"
    stub.write_text("nameserver 127.0.0.53\nsearch lan.example\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 198.51.100.1\nnameserver 198.51.100.2\nsearch lan.example\n")
    assert derived.host_dns((stub, upstream)) == (["198.51.100.1", "198.51.100.2"],
                                                  ["lan.example"])
    assert derived.host_dns((stub, tmp_path / "missing")) == ([], ["lan.example"])


def test_inherit_is_a_value_of_its_own(tmp_path: Path) -> None:
    etc = tmp_path / "resolv.conf"
    etc.write_text("nameserver 192.0.2.1\nsearch host.example\n")
    cfg = VeConfig.parse('NAMESERVER="inherit"\nSEARCHDOMAIN="inherit"\n')   # accepted
    setup = derived.dist_setup(cfg, (etc,))
    assert setup.nameservers == ("192.0.2.1",) and setup.searchdomain == "host.example"
    setup = derived.dist_setup(VeConfig.parse('NAMESERVER="198.51.100.9 inherit"\n'), (etc,))
    assert setup.nameservers == ("198.51.100.9", "192.0.2.1") and setup.searchdomain is None
    setup = derived.dist_setup(VeConfig.parse('NAMESERVER="198.51.100.9"\n'), (etc,))
    assert setup.nameservers == ("198.51.100.9",)
    assert params.normalize(params.param_by_option("nameserver"), "inherit") == "inherit"
    assert params.normalize(params.param_by_option("searchdomain"), "inherit") == "inherit"
    with pytest.raises(ConfigError):
        VeConfig.parse('NAMESERVER="inherited"\n')
    with pytest.raises(ConfigError):
        VeConfig.parse('SEARCHDOMAIN="inherit_"\n')
