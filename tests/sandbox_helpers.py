"""Hostile build inputs for the build-sandbox tests.

``buildescape`` (tests/probe/buildescape.c, built static) is what a hostile
maintainer script or template script does while a cache is built: the classic
chroot escape (chroot into a subdirectory, climb out with "..", chroot there)
and /proc/1/root, each writing a host file; a mount, a block device node, and
TCP connections to the host's loopback.  The hostile package's %post also
writes into dnf's package cache, which later builds share.  :class:`Listener` is such a host
service, counting who reaches it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.rpmrepo.builder import REVISION, Distribution, createrepo, gpg_kill, rpmsign

PROBE_SRC = Path(__file__).resolve().parent / "probe" / "buildescape.c"
PROBE = "/usr/bin/buildescape"          # where the RPM puts it in a tree

SPEC = """\
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none

Name:           vztest-hostile
Version:        1.0
Release:        1
Summary:        A package whose %%post tries to leave the build sandbox
License:        GPL-2.0-or-later
AutoReqProv:    no
Requires:       vztest-escapetool
Requires(post): vztest-escapetool
Requires(post): /bin/sh

%description
Its %%post scriptlet runs buildescape.

%package -n vztest-escapetool
Summary:        The buildescape probe

%description -n vztest-escapetool
A static program that tries to leave the build sandbox.

%install
install -D -m 0755 %{vz_probe} %{buildroot}@PROBE@

%post
cd /tmp && @PROBE@ @HOSTFILE@ @PORT@ > /etc/buildescape-rpm-post 2>&1
cat /etc/buildescape-rpm-post
echo poisoned > /var/cache/dnf/vzpkg-poison
exit 0

%files

%files -n vztest-escapetool
@PROBE@
"""


def build_probe(dest: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build tests/probe/buildescape.c "
                    "(tools/install-system-deps)")
    subprocess.run(["gcc", "-static", "-O", "-o", str(dest), str(PROBE_SRC)], check=True)
    return dest


class Listener:
    """A TCP service on the host's 127.0.0.1 that counts its connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def hostile_repo(dist: Distribution, work: Path, *, hostfile: Path, port: int) -> Path:
    """The good repository plus vztest-escapetool and vztest-hostile (whose %post
    runs the probe against *hostfile* and *port*), signed by the distribution's
    key, as the served directory ``hostile``."""
    work.mkdir(parents=True, exist_ok=True)
    probe = build_probe(work / "buildescape")
    spec = work / "hostile.spec"
    spec.write_text(SPEC.replace("@PROBE@", PROBE).replace("@HOSTFILE@", str(hostfile))
                    .replace("@PORT@", str(port)))
    top = work / "rpmbuild"
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}",
                    "--define", f"vz_probe {probe}", "--define", "_binary_payload w1.gzdio",
                    str(spec)], check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C"})
    rpms = sorted((top / "RPMS").rglob("*.rpm"))
    repo = dist.root / "hostile"
    if repo.exists():
        shutil.rmtree(repo)
    try:
        rpmsign(dist.key, rpms)
        createrepo(repo, [*dist.rpms, *rpms], revision=REVISION, sign_with=dist.key)
    finally:
        gpg_kill(dist.key)
    return repo


def report(text: str) -> dict[str, str]:
    """The probe's lines as {attempt: "ok" or the error}."""
    out = {}
    for line in text.splitlines():
        what, _, rest = line.partition(" ")
        if rest == "ok" or rest.startswith("failed:"):
            out[what] = rest
    return out
