"""A Debian build's post-install script cannot leave the build sandbox, and still
reaches the package proxy (built from the Debian mirror this host's apt uses).

The script (the template's, as a hostile template or a hooks/ file a package
dropped could make it) tries the classic chroot escape with perl, /proc/1/root,
a mount, a block device node and a TCP connection to a service on the host's
loopback; then runs apt-get update through the proxy, as post-install scripts
may.  Everything but the proxy fails; the host file never appears.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli
from tests.sandbox_helpers import Listener, report
from vzpkg.core.settings import SHIPPED_METADATA

NAME = "debian-12-x86_64-minimal"
pytestmark = [pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 host"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SCRIPT = r"""
set +e
cd /tmp
{
perl -e '
    mkdir "vzpkg-x"; chroot "vzpkg-x" or die "chroot-escape failed: $!\n";
    chdir ".." for 1 .. 256; chroot "." or die "chroot-escape failed: $!\n";
    print(open(my $r, "<", "@HOST@.host") ? "chroot-escape-read ok\n"
                                          : "chroot-escape-read failed: $!\n");
    print(open(my $w, ">", "@HOST@") ? "chroot-escape ok\n" : "chroot-escape failed: $!\n");'
if echo escaped > /proc/1/root@HOST@; then echo "proc-1-root ok"
else echo "proc-1-root failed: -"; fi
mkdir -p /tmp/vzpkg-m
if mount -t tmpfs none /tmp/vzpkg-m; then echo "mount ok"; else echo "mount failed: -"; fi
if mknod /tmp/vzpkg-sda b 8 0; then echo "mknod ok"; else echo "mknod failed: -"; fi
rm -f /tmp/vzpkg-sda; rmdir /tmp/vzpkg-m
if timeout 10 bash -c 'echo > /dev/tcp/127.0.0.1/@PORT@'; then echo "connect-@PORT@ ok"
else echo "connect-@PORT@ failed: -"; fi
if apt-get -q update; then echo "proxy ok"; else echo "proxy failed: -"; fi
} > /etc/buildescape-post-install 2>&1
cat /etc/buildescape-post-install
"""


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, listener: Listener) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("sandbox")
    host = base / "escaped-by-post-install"
    host.with_name(host.name + ".host").write_text("a host file\n")
    ws = base / "ws"
    meta = ws / "metadata"
    meta.mkdir(parents=True)
    (ws / "vzpkg.yaml").write_text("cache_dir: caches\n")
    shutil.copytree(SHIPPED_METADATA / "keys", meta / "keys")
    data = yaml.safe_load((SHIPPED_METADATA / "debian.yaml").read_text())
    data["scripts"]["post-install"] = (SCRIPT.replace("@HOST@", str(host))
                                       .replace("@PORT@", str(listener.port)))
    (meta / "debian.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    r = run_cli("vzpkg", ["--workspace", ws, "build", NAME])
    assert r.returncode == 0, r.stdout + r.stderr
    out = subprocess.run(["tar", "--zstd", "-xOf", str(ws / "caches" / f"{NAME}.tar.zst"),
                          "./etc/buildescape-post-install"], capture_output=True, text=True,
                         check=True).stdout
    return {"host": host, "probe": report(out), "output": out}


def test_a_post_install_script_cannot_leave_the_ve(built: dict[str, Any],
                                                   listener: Listener) -> None:
    probe = built["probe"]
    for what in ("chroot-escape-read", "chroot-escape", "proc-1-root", "mount", "mknod",
                 f"connect-{listener.port}"):
        assert probe.get(what, "").startswith("failed"), (what, built["output"])
    assert not built["host"].exists()
    assert listener.connections == 0


def test_the_package_proxy_stays_reachable(built: dict[str, Any]) -> None:
    assert built["probe"].get("proxy") == "ok", built["output"]
