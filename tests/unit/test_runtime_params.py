"""The OpenVZ parameter table: value syntax, vzctl set options, errors."""

from __future__ import annotations

import argparse

import pytest

from vzpkg.core.errors import UsageError
from vzpkg.runtime import params as P
from vzpkg.runtime.params import (
    PARAMS,
    UNLIMITED,
    ParamError,
    add_set_options,
    normalize,
    options_to_values,
    param_by_key,
    param_by_option,
    parse_barrier_limit,
    parse_cpumask,
    parse_size,
)


def _parse(*argv: str, only: tuple[str, ...] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_set_options(p, only)
    return p.parse_args(list(argv))


@pytest.mark.parametrize(("text", "expected"), [
    ("512M", 512 << 20), ("1G", 1 << 30), ("1.5G", 3 << 29), ("2048K", 2 << 20),
    ("10P", 40960), ("4096", 4096), ("1gib", 1 << 30), ("unlimited", UNLIMITED),
    (str(UNLIMITED), UNLIMITED),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "12X", "-1M", "1.5", "M", "1 2"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ParamError):
        parse_size(bad)


def test_pages_are_pages_unless_suffixed() -> None:
    p = param_by_key("PHYSPAGES")
    assert normalize(p, "0:512M") == "0:131072"
    assert normalize(p, "0:131072") == "0:131072"
    assert normalize(p, "256M") == "65536:65536"
    assert normalize(p, "0:unlimited") == "0:unlimited"
    assert parse_barrier_limit("0:1G", pages=True) == (0, 262144)


@pytest.mark.parametrize(("bad", "needle"), [
    ("300:200", "barrier must not be above the limit"),
    ("1:2:3", "barrier:limit"), ("abc", "not a number"), (":5", "barrier:limit"),
])
def test_barrier_limit_errors(bad: str, needle: str) -> None:
    with pytest.raises(ParamError, match=needle):
        normalize(param_by_key("NUMPROC"), bad)


def test_cpumask() -> None:
    assert parse_cpumask("all") is None
    assert parse_cpumask("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    assert normalize(param_by_key("CPUMASK"), "3,0,1,2") == "0-3"
    with pytest.raises(ParamError):
        parse_cpumask("3-1")


def test_table_is_consistent() -> None:
    options = [p.option for p in PARAMS]
    assert len(options) == len(set(options))
    keys = {p.key for p in PARAMS}
    for key in keys:
        assert [p for p in PARAMS if p.key == key and p.primary], key
        assert sum(p.primary for p in PARAMS if p.key == key) == 1, key
    for p in PARAMS:
        assert p.help and p.key.isupper()
        if p.default is not None:
            normalize(p, p.default)
    assert {"CPUUNITS", "CPULIMIT", "PHYSPAGES", "SWAPPAGES", "NUMPROC", "CPUMASK"} <= set(
        P.RESOURCE_KEYS)


def test_lookup() -> None:
    assert param_by_option("ram").key == "PHYSPAGES"
    assert param_by_option("--cpuunits").key == "CPUUNITS"
    assert param_by_key("PHYSPAGES").option == "physpages"
    with pytest.raises(UsageError, match="unknown parameter option --bogus"):
        param_by_option("bogus")
    with pytest.raises(UsageError, match="unknown parameter BOGUS"):
        param_by_key("BOGUS")


def test_set_options_become_conf_values() -> None:
    args = _parse("--cpuunits", "3000", "--cpulimit", "150%", "--ram", "1G",
                  "--numproc", "100:200", "--swap", "0", "--onboot", "on",
                  "--hostname", "web1.example.org", "--nameserver", "10.0.0.1",
                  "--nameserver", "fd00::1", "--cpumask", "0")
    assert options_to_values(args) == {
        "CPUUNITS": "3000", "CPULIMIT": "150", "PHYSPAGES": "0:262144",
        "NUMPROC": "100:200", "SWAPPAGES": "0:0", "ONBOOT": "yes",
        "HOSTNAME": "web1.example.org", "NAMESERVER": "10.0.0.1 fd00::1", "CPUMASK": "0",
    }


def test_no_options_no_values() -> None:
    assert options_to_values(_parse()) == {}


def test_ipadd_ipdel_edit_the_current_list() -> None:
    current = {"IP_ADDRESS": "10.0.0.2 10.0.0.3/24 fd00::2"}.get
    args = _parse("--ipadd", "10.0.0.4", "--ipadd", "10.0.0.2", "--ipdel", "10.0.0.3")
    assert options_to_values(args, current) == {"IP_ADDRESS": "10.0.0.2 fd00::2 10.0.0.4"}
    args = _parse("--ipdel", "all", "--ipadd", "192.168.1.5/24")
    assert options_to_values(args, current) == {"IP_ADDRESS": "192.168.1.5/24"}
    assert options_to_values(_parse("--ipadd", "10.1.1.1")) == {"IP_ADDRESS": "10.1.1.1"}


@pytest.mark.parametrize(("argv", "needle"), [
    (("--cpuunits", "5"), "--cpuunits: 5 is out of range 8..500000"),
    (("--cpuunits", "lots"), "--cpuunits: 'lots' is not a whole number"),
    (("--ram", "512"), "did you mean 512M"),
    (("--ram", "big"), "--ram: 'big' is not a size"),
    (("--numproc", "50:10"), "--numproc: '50:10': the barrier must not be above the limit"),
    (("--ipadd", "10.0.0.300"), "--ipadd: '10.0.0.300' is not an IPv4 or IPv6 address"),
    (("--hostname", "bad_host!"), "--hostname: 'bad_host!' is not a valid host name"),
    (("--onboot", "maybe"), "--onboot: 'maybe' is not yes or no"),
    (("--nameserver", "dns.example"), "not an IP address of a name server"),
])
def test_bad_option_values_are_usage_errors(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UsageError) as ei:
        options_to_values(_parse(*argv))
    assert needle in str(ei.value)
    assert ei.value.hint and ei.value.hint.startswith(f"{argv[0]} ")
    assert ei.value.exit_code == 2


def test_ram_and_physpages_conflict() -> None:
    with pytest.raises(UsageError, match="--physpages and --ram both set PHYSPAGES"):
        options_to_values(_parse("--ram", "1G", "--physpages", "0:100"))


def test_add_set_options_only_and_help() -> None:
    p = argparse.ArgumentParser()
    add_set_options(p)
    text = p.format_help()
    for opt in ("--cpuunits N", "--ram SIZE", "--physpages B:L", "--numproc B:L",
                "--ipadd IP", "--ipdel IP|all", "--nameserver IP", "--hostname NAME"):
        assert opt in text
    assert "--layout" not in text and "--ostemplate" not in text
    args = _parse("--layout", "overlay", "--hostname", "a", only=("layout", "hostname"))
    assert options_to_values(args) == {"VE_LAYOUT": "overlay", "HOSTNAME": "a"}
    with pytest.raises(SystemExit):
        _parse("--cpuunits", "5", only=("layout",))
