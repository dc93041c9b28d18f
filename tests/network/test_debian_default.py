"""The shipped `default` set (minimal plus an SSH server and everyday tools), built
from the mirror and run: two VEs from one cache each make their own ssh host keys
on first start, and sshd answers on the VE's address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.runtime_helpers import KNOWN_FAILED_UNITS, failed_units

NAME = "debian-12-x86_64-default"
VES = {9301: "198.18.93.1", 9302: "198.18.93.2"}
pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 host")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ws-default")
    (d / "vzpkg.yaml").write_text("cache_dir: caches\n")
    r = run_cli("vzpkg", ["--workspace", d, "build", NAME, "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["status"] == "built"
    return d


def vzctl(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("vzctl", list(args), env={"VZ_ROOT": str(ws / "vz"),
                                             "VZPKG_CACHE_DIR": str(ws / "caches")},
                   timeout=300)


@pytest.fixture(scope="module")
def running(ws: Path) -> Iterator[dict[int, str]]:
    try:
        for ctid, ip in VES.items():
            r = vzctl(ws, "create", str(ctid), "--ostemplate", NAME, "--layout", "overlay",
                      "--ipadd", ip, "--hostname", f"ve{ctid}")
            assert r.returncode == 0, r.stderr
            r = vzctl(ws, "start", str(ctid), "--wait")
            assert r.returncode == 0, r.stderr
            assert "is up (" in r.stdout, r.stdout
        for ip in VES.values():   # as a server boots: host keys first, then sshd
            deadline = time.monotonic() + 90
            while True:
                try:
                    socket.create_connection((ip, 22), timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"sshd on {ip} never came up"
                    time.sleep(0.2)
        yield VES
    finally:
        for ctid in VES:
            vzctl(ws, "stop", str(ctid))
            vzctl(ws, "destroy", str(ctid))


def ve_sh(ws: Path, ctid: int, cmd: str) -> str:
    r = vzctl(ws, "exec", str(ctid), cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_the_cache_ships_sshd_but_no_host_keys(ws: Path) -> None:
    listing = subprocess.run(["tar", "--zstd", "-tf", ws / "caches" / f"{NAME}.tar.zst"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert "./usr/sbin/sshd" in listing
    assert not [e for e in listing if "/etc/ssh/ssh_host_" in e]
    manifest = json.loads((ws / "caches" / f"{NAME}.manifest.json").read_text())
    assert {"openssh-server", "sudo", "curl", "cron", "locales"} <= {
        p["name"] for p in manifest["packages"]}


def test_each_ve_makes_its_own_host_keys(ws: Path, running: dict[int, str]) -> None:
    prints = {ctid: ve_sh(ws, ctid, "for k in /etc/ssh/ssh_host_*_key.pub; do "
                                    "ssh-keygen -lf $k; done") for ctid in running}
    for out in prints.values():
        assert "ED25519" in out and "RSA" in out, out
    first, second = prints.values()
    assert not set(first.split()) & {w for w in second.split() if w.startswith("SHA256:")}


def test_sshd_answers_on_the_ve_address(ws: Path, running: dict[int, str]) -> None:
    for ctid, ip in running.items():
        with socket.create_connection((ip, 22), timeout=10) as s:
            banner = s.recv(64)
        assert banner.startswith(b"SSH-2.0-OpenSSH"), (ctid, banner)
        assert f"ve{ctid}" in ve_sh(ws, ctid, "hostname")


def test_the_ves_run_systemd_with_no_unexpected_failure(ws: Path,
                                                        running: dict[int, str]) -> None:
    for ctid in running:
        assert ve_sh(ws, ctid, "readlink /proc/1/exe").strip().endswith("/systemd/systemd")
        state = ve_sh(ws, ctid, "systemctl is-system-running || true").strip()
        assert state in ("running", "degraded"), state
        failed = failed_units(ve_sh(ws, ctid, "systemctl --failed --plain --no-legend"))
        assert failed <= KNOWN_FAILED_UNITS, failed


def _ssh_up(ip: str) -> bool:
    try:
        socket.create_connection((ip, 22), timeout=2).close()
        return True
    except OSError:
        return False


def test_systemctl_stops_and_starts_sshd(ws: Path, running: dict[int, str]) -> None:
    ctid, ip = next(iter(running.items()))
    ve_sh(ws, ctid, "systemctl stop ssh.service ssh.socket 2>/dev/null || "
                    "systemctl stop ssh.service")
    deadline = time.monotonic() + 20
    while _ssh_up(ip):
        assert time.monotonic() < deadline, "sshd still answers after systemctl stop"
        time.sleep(0.2)
    ve_sh(ws, ctid, "systemctl start ssh.service")
    deadline = time.monotonic() + 20
    while not _ssh_up(ip):
        assert time.monotonic() < deadline, "sshd never came back after systemctl start"
        time.sleep(0.2)


def test_reboot_and_poweroff_inside(ws: Path, running: dict[int, str]) -> None:
    """Last: reboot the first VE (it comes back, sshd too), power off the second
    (it stops, and nothing of it stays mounted)."""
    (a, ip_a), (b, _) = list(running.items())
    before = ve_sh(ws, a, "cat /proc/1/stat").split()[21]
    vzctl(ws, "exec", str(a), "systemctl reboot")
    deadline = time.monotonic() + 90
    while True:
        r = vzctl(ws, "exec", str(a), "cat /proc/1/stat")
        if r.returncode == 0 and r.stdout.split()[21] != before and _ssh_up(ip_a):
            break
        assert time.monotonic() < deadline, "the VE did not come back from reboot"
        time.sleep(0.5)
    vzctl(ws, "exec", str(b), "systemctl poweroff")
    deadline = time.monotonic() + 60
    while "down" not in vzctl(ws, "status", str(b)).stdout:
        assert time.monotonic() < deadline, "the VE did not stop after poweroff"
        time.sleep(0.5)
    assert "unmounted" in vzctl(ws, "status", str(b)).stdout
