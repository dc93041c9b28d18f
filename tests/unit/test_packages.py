"""Installed packages read from a dpkg status file and from a real rpmdb."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vzpkg.core.errors import StoreError
from vzpkg.core.types import InstalledPackage
from vzpkg.store.packages import parse_dpkg_status, read_installed

STATUS = """\
Package: zlib1g
Status: install ok installed
Priority: required
Architecture: amd64
Multi-Arch: same
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime
 zlib is a library implementing the deflate compression method found
 .
 in gzip and PKZIP.

Package: base-files
Essential: yes
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5

Package: removed-but-configured
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: half-installed
Status: install reinstreq half-installed
Architecture: amd64
Version: 2.0

Package: held
Status: hold ok installed
Architecture: all
Version: 3.0

Package: zlib1g
Status: install ok installed
Architecture: i386
Version: 1:1.2.13.dfsg-1
"""


def test_dpkg_status(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    assert read_installed(tmp_path) == (
        InstalledPackage("base-files", "12.4+deb12u5", "amd64"),
        InstalledPackage("held", "3.0", "all"),
        InstalledPackage("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
        InstalledPackage("zlib1g", "1:1.2.13.dfsg-1", "i386"),
    )


def test_dpkg_status_d(tmp_path: Path) -> None:
    d = tmp_path / "var/lib/dpkg/status.d"
    d.mkdir(parents=True)
    (d / "tzdata").write_text("Package: tzdata\nStatus: install ok installed\n"
                              "Architecture: all\nVersion: 2024a-0+deb12u1\n")
    (d / "tzdata.md5sums").write_text("abc  usr/share/zoneinfo/UTC\n")
    assert read_installed(tmp_path) == (InstalledPackage("tzdata", "2024a-0+deb12u1", "all"),)


def test_dpkg_entry_without_version_names_the_line() -> None:
    text = "Package: a\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n\n\n" \
           "Package: b\nStatus: install ok installed\nArchitecture: all\n"
    with pytest.raises(StoreError, match=r"^status:7: .*Version"):
        parse_dpkg_status(text, source="status")


def test_empty_tree(tmp_path: Path) -> None:
    assert read_installed(tmp_path) == ()


def _build_rpm(top: Path, name: str, version: str, epoch: str | None) -> Path:
    top.mkdir(exist_ok=True)
    spec = top / f"{name}.spec"
    spec.write_text(f"Name: {name}\nVersion: {version}\nRelease: 1\n"
                    + (f"Epoch: {epoch}\n" if epoch else "")
                    + "Summary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%files\n")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)],
                   check=True, capture_output=True)
    return next((top / "RPMS/noarch").glob(f"{name}-{version}-*.rpm"))


@pytest.mark.skipif(not (shutil.which("rpm") and shutil.which("rpmbuild")),
                    reason="rpm and rpmbuild are not installed")
@pytest.mark.parametrize("dbpath", ["/usr/lib/sysimage/rpm", "/var/lib/rpm"])
def test_rpmdb(tmp_path: Path, dbpath: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rpms = [_build_rpm(tmp_path / "top", "tiny", "1.2", "2"),
            _build_rpm(tmp_path / "top", "alpha", "0.1", None)]
    rpm = ["rpm", "--root", str(root), "--dbpath", dbpath]
    subprocess.run([*rpm, "--initdb"], check=True)
    subprocess.run([*rpm, "-i", "--nodeps", "--justdb", *map(str, rpms)], check=True,
                   capture_output=True)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert read_installed(root) == (InstalledPackage("alpha", "0.1-1", "noarch"),
                                    InstalledPackage("tiny", "2:1.2-1", "noarch"))
    # reading does not change the tree that is about to be packed
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.skipif(not shutil.which("rpm"), reason="rpm is not installed")
def test_damaged_rpmdb_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "var/lib/rpm"
    db.mkdir(parents=True)
    (db / "rpmdb.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="rpm could not read"):
        read_installed(tmp_path)


@pytest.mark.skipif(not (shutil.which("dpkg-query") and Path("/var/lib/dpkg/status").is_file()),
                    reason="not a dpkg host")
def test_host_dpkg_database_matches_dpkg_query() -> None:
    out = subprocess.run(["dpkg-query", "-W", "-f",
                          "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
                         capture_output=True, text=True, check=True).stdout
    want = {InstalledPackage(*line.split("\t")[1:]) for line in out.splitlines()
            if line[:2] in ("ii", "hi")}
    got = read_installed(Path("/"))
    assert set(got) == want and len(got) == len(want) > 50
    assert list(got) == sorted(got, key=lambda p: (p.name, p.arch, p.version))
