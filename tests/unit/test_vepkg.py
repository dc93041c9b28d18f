"""vzpkg for VEs without root: the proxy as the VEs reach it (forward-proxy
requests, only for the host's repositories, one download for many clients), the
command routing, and reading what the package managers say."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from tests.mirror_helpers import MirrorServer
from tests.unit.test_pkgcache import _upstream
from vzpkg.build.pkgcache import CachingProxy
from vzpkg.cli import cmd_ve
from vzpkg.cli.cmd_ve import is_ve_command
from vzpkg.cli.vzpkg import VE_COMMANDS
from vzpkg.core.errors import UsageError
from vzpkg.runtime import pkgmgr


def test_a_ve_reaches_only_the_hosts_repositories(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    lines: list[str] = []
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        upstream = srv.url.rstrip("/")
        proxy.allow(upstream)
        proxy.log = lines.append
        via = {"http": f"http://127.0.0.1:{proxy.port()}"}
        deb = f"{upstream}/pool/main/h/hello_1.0_amd64.deb"
        assert requests.get(deb, proxies=via, timeout=10).content == b"deb-v1" * 1000
        # anything else (another host service, another path prefix) is refused
        for url in ("http://127.0.0.1:1/admin", "http://169.254.169.254/latest/meta-data/",
                    f"{upstream}/../../etc/passwd", f"{upstream}/pool//a.deb"):
            r = requests.get(url, proxies=via, timeout=10)
            assert r.status_code in (400, 403, 404), url
        assert [ln.split()[0] for ln in lines].count("fetched") == 1
        assert sum(1 for p, _ in srv.log if "pool/" in p) == 1


def test_many_clients_at_once_cause_one_download(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        upstream = srv.url.rstrip("/")
        proxy.allow(upstream)
        via = {"http": f"http://127.0.0.1:{proxy.port()}"}
        got: list[bytes] = []

        def one() -> None:
            got.append(requests.get(f"{upstream}/pool/main/h/hello_1.0_amd64.deb",
                                    proxies=via, timeout=30).content)
        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == [b"deb-v1" * 1000] * 12
        assert sum(1 for p, _ in srv.log if "pool/" in p) == 1
        assert proxy.stats.hits == 11


@pytest.mark.parametrize(("argv", "ve"), [
    (["install", "101", "hello"], True),
    (["--cache-dir", "/x", "check-updates", "--all"], True),
    (["update", "101"], True),
    (["update", "--all", "--security"], True),
    (["list", "101", "--json"], True),
    (["remove", "102", "hello"], True),
    (["update", "debian-12"], False),
    (["list"], False),
    (["list", "--json"], False),
    (["remove", "debian-12-x86_64-minimal"], False),
    (["--workspace", "ws", "build", "debian-12"], False),
])
def test_ve_commands_and_cache_commands_share_names(argv: list[str], ve: bool) -> None:
    assert is_ve_command(argv) is ve


def test_vzpkg_knows_the_ve_commands_without_importing_their_module() -> None:
    # vzpkg.cli.vzpkg imports cmd_ve only when a word of argv is one of VE_COMMANDS
    assert set(cmd_ve.COMMANDS) == VE_COMMANDS


def test_package_names_cannot_carry_shell(tmp_path: Path) -> None:
    for good in ("hello", "hello=2.10-3", "libc6:amd64", "vztest-c.x86_64", "g++"):
        assert pkgmgr.check_package(good) == good
    for bad in ("hello; rm -rf /", "$(id)", "-o", "a b", "../x", ""):
        with pytest.raises(UsageError):
            pkgmgr.check_package(bad)


def test_updates_are_read_and_security_ones_marked() -> None:
    text = ("vzpkg: package manager: apt\n"
            "UPDATE libc6 2.36-9+deb12u4 2.36-9+deb12u7 Debian:12.8/stable, "
            "Debian-Security:12/stable-security [amd64]\n"
            "UPDATE tzdata 2024a-0+deb12u1 2024b-0+deb12u1 Debian:12.8/stable-updates "
            "[all]\n"
            "UPDATE vztest-c 1.0-1 1.0-2 vztest\n"
            "UPDATE openssl 3.0-1 3.0-2 updates security\n")
    ups = pkgmgr.parse_updates(text)
    assert [(u.name, u.security) for u in ups] == [
        ("libc6", True), ("tzdata", False), ("vztest-c", False), ("openssl", True)]
    assert ups[0].installed == "2.36-9+deb12u4" and ups[0].available == "2.36-9+deb12u7"


def test_failures_are_named_for_people() -> None:
    assert pkgmgr.classify(98, "")[0] == "no-package-manager"
    kind, msg = pkgmgr.classify(
        100, "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by "
             "process 68 (perl)\nN: Be aware that removing the lock file is not a solution")
    assert kind == "locked" and "process 68" in msg and "nothing was changed" in msg
    assert pkgmgr.classify(100, "W: GPG error: http://x bookworm InRelease: The following "
                                "signatures couldn't be verified because the public key is "
                                "not available: NO_PUBKEY 6ED0E7B82643E131")[0] == "signature"
    assert pkgmgr.classify(100, "E: Unable to locate package nosuch")[0] == "not-found"
    kind, msg = pkgmgr.classify(100, "Reading package lists...\nE: Something else\n")
    assert kind == "failed" and "E: Something else" in msg
