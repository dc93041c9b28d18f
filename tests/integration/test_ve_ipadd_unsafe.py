"""vzctl refuses addresses that would route the host's own traffic to a VE.

Through the CLI, as a user types it: a clean error naming the address and why,
no traceback, no VE left, no host route added.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.runtime_helpers import destroy_all, runtime_for
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9381


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("ipadd"))
    yield r
    destroy_all(r)


def _env(rt: Runtime) -> dict[str, str]:
    return {"VZ_ROOT": str(rt.paths.root), "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}


def _routes(addr: str) -> str:
    fam = "-6" if ":" in addr else "-4"
    return subprocess.run(["ip", fam, "route", "show", "table", "all", addr],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(("addr", "why"), [
    ("127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
    ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("255.255.255.255", "broadcast"), ("::ffff:127.0.0.1", "IPv4-mapped"),
])
def test_create_refuses_an_unsafe_address(rt: Runtime, addr: str, why: str) -> None:
    before = _routes(addr)
    r = run_cli("vzctl", ["create", str(CTID), "--ostemplate", "busybox-1",
                          "--ipadd", addr], env=_env(rt), timeout=120)
    assert_user_error(r, addr, why, "cannot be a VE's address")
    assert not rt.paths.conf(CTID).exists()
    assert not rt.paths.private(CTID).exists()
    assert _routes(addr) == before


def test_set_refuses_an_unsafe_address_and_keeps_the_config(rt: Runtime) -> None:
    r = run_cli("vzctl", ["create", str(CTID), "--ostemplate", "busybox-1",
                          "--ipadd", "198.18.98.1"], env=_env(rt), timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        conf = Path(rt.paths.conf(CTID)).read_text()
        for addr, why in (("127.0.0.1", "loopback"), ("169.254.0.1", "link-local"),
                          ("10.9.0.0/16", "network address")):
            r = run_cli("vzctl", ["set", str(CTID), "--ipadd", addr, "--save"],
                        env=_env(rt), timeout=120)
            assert_user_error(r, addr.split("/")[0], why)
            assert Path(rt.paths.conf(CTID)).read_text() == conf
    finally:
        rt.destroy(CTID)
