"""Per-distribution setup files, written into a tree as the VE would see them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from vzpkg.runtime import dists
from vzpkg.runtime.dists import DistSetup, Family

SETUP = DistSetup(hostname="web.example", addrs=("10.0.0.5/32", "fd00::5/128", "10.0.0.6/24"),
                  nameservers=("10.0.0.1", "fd00::53"), searchdomain="example")


def tree(tmp_path: Path, os_release: str, dirs: tuple[str, ...]) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(os_release)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n10.9.9.9 keepme\n")
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def test_debian(tmp_path: Path) -> None:
    root = tree(tmp_path, 'ID=debian\nVERSION_ID="12"\n', ("etc/network",
                                                          "etc/systemd/network"))
    assert dists.apply(SETUP, str(root)) is Family.DEBIAN
    assert (root / "etc/hostname").read_text() == "web.example\n"
    hosts = (root / "etc/hosts").read_text()
    assert "10.9.9.9 keepme" in hosts and "127.0.1.1\tweb.example web" in hosts
    dists.apply(SETUP, str(root))  # idempotent
    assert (root / "etc/hosts").read_text() == hosts
    resolv = (root / "etc/resolv.conf").read_text()
    assert "nameserver 10.0.0.1\nnameserver fd00::53" in resolv and "search example" in resolv
    ifaces = (root / "etc/network/interfaces").read_text()
    assert "iface eth0 inet manual\n\tup ip addr replace 10.0.0.5/32 dev eth0" in ifaces
    assert "up ip addr replace 10.0.0.6/24 dev eth0" in ifaces
    assert "iface eth0 inet6 manual\n\tup ip -6 addr replace fd00::5/128 dev eth0" in ifaces
    unit = (root / "etc/systemd/network/10-vzctl-eth0.network").read_text()
    assert "Address=10.0.0.5/32" in unit and "Gateway=169.254.0.1" in unit


def test_ubuntu_is_debian_family(tmp_path: Path) -> None:
    root = tree(tmp_path, "ID=ubuntu\nID_LIKE=debian\n", ())
    assert dists.family(str(root)) is Family.DEBIAN


def test_redhat(tmp_path: Path) -> None:
    root = tree(tmp_path, 'ID="almalinux"\nID_LIKE="rhel centos fedora"\n',
                ("etc/sysconfig/network-scripts", "etc/NetworkManager/system-connections"))
    assert dists.apply(SETUP, str(root)) is Family.REDHAT
    ifcfg = (root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
    assert "IPADDR=10.0.0.5\nPREFIX=32" in ifcfg and "IPADDR1=10.0.0.6\nPREFIX1=24" in ifcfg
    assert "IPV6ADDR=fd00::5/128" in ifcfg and "GATEWAY=169.254.0.1" in ifcfg
    nm = root / "etc/NetworkManager/system-connections/eth0.nmconnection"
    assert "address1=10.0.0.5/32" in nm.read_text() and oct(nm.stat().st_mode)[-3:] == "600"
    assert "HOSTNAME=web.example" in (root / "etc/sysconfig/network").read_text()


def test_unknown_family_gets_the_basics(tmp_path: Path) -> None:
    root = tree(tmp_path, "ID=busybox\n", ("etc/network",))
    assert dists.apply(SETUP, str(root)) is Family.OTHER
    assert (root / "etc/hostname").exists() and (root / "etc/resolv.conf").exists()
    assert not (root / "etc/network/interfaces").exists()


def test_symlinked_file_is_replaced_not_followed(tmp_path: Path) -> None:
    root = tree(tmp_path, "ID=debian\n", ())
    outside = tmp_path / "outside"
    outside.write_text("do not touch\n")
    (root / "etc/resolv.conf").symlink_to(outside)
    dists.apply(SETUP, str(root))
    assert outside.read_text() == "do not touch\n"
    assert not (root / "etc/resolv.conf").is_symlink()


def test_planted_fifos_never_block_and_are_replaced(tmp_path: Path) -> None:
    """A VE's FIFO at a name the setup reads or writes (or at the temporary name
    beside it) is ignored or replaced: the setup finishes, nothing hangs."""
    root = tree(tmp_path, "ID=debian\n", ("etc/network",))
    fifos = ["etc/hosts", "etc/hostname.vztmp", "etc/resolv.conf.vztmp",
             "etc/network/interfaces", "etc/os-release.vztmp"]
    (root / "etc/debian_version").write_text("12.8\n")   # the family, os-release aside
    for rel in [*fifos, "etc/os-release"]:
        if (root / rel).exists():
            os.unlink(root / rel)
        os.mkfifo(root / rel)
    done: list[dists.Family] = []
    t = threading.Thread(target=lambda: done.append(dists.apply(SETUP, str(root))),
                         daemon=True)
    t.start()
    t.join(10)
    assert done, "dists.apply blocked on a FIFO"
    for rel in ("etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/network/interfaces"):
        assert (root / rel).is_file(), rel
    assert not (root / "etc/hostname.vztmp").exists()
