"""vzctl/vzlist lifecycle against real namespaces, mounts, cgroups and veth pairs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, enter_session, find_debian_cache, runtime_for, sh
from vzpkg.core.errors import VeError
from vzpkg.runtime import layout, net
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

BIN = Path(sys.executable).parent
BB = "busybox-1-x86_64-minimal"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("vzctl"))
    yield r
    destroy_all(r)


def vzctl(rt: Runtime, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
           "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    return subprocess.run([str(BIN / "vzctl"), *args], env=env, input=stdin,
                          capture_output=True, text=True, check=False, timeout=120)


def vzlist(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    return subprocess.run([str(BIN / "vzlist"), *args], env=env, capture_output=True,
                          text=True, check=False, timeout=60)


def host_leftovers(rt: Runtime, ctid: int) -> list[str]:
    out = []
    for p in (rt.paths.conf(ctid), rt.paths.private(ctid), rt.paths.ve_root(ctid),
              rt.paths.pidfile(ctid)):
        if p.exists():
            out.append(str(p))
    if net.link_exists(rt.paths.host_ifname(ctid)):
        out.append(rt.paths.host_ifname(ctid))
    if rt.cgroups.exists(str(ctid)):
        out.append(f"cgroup {ctid}")
    return out


@pytest.mark.parametrize("lay", ["plain", "overlay"])
def test_lifecycle_cli(rt: Runtime, lay: str) -> None:
    ctid = 9201 if lay == "plain" else 9202
    r = vzctl(rt, "create", str(ctid), "--ostemplate", "busybox-1", "--layout", lay,
              "--hostname", f"ve{ctid}")
    assert r.returncode == 0, r.stderr
    assert vzctl(rt, "status", str(ctid)).stdout.strip() == \
        f"CTID {ctid} exist unmounted down"
    assert rt.config(ctid).get("VE_LAYOUT") == lay
    assert rt.config(ctid).get("OSTEMPLATE") == BB
    r = vzctl(rt, "start", str(ctid))
    assert r.returncode == 0, r.stderr
    assert vzctl(rt, "status", str(ctid)).stdout.strip() == \
        f"CTID {ctid} exist mounted running"
    r = vzctl(rt, "exec", str(ctid), "hostname; echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout.split() == [f"ve{ctid}", "out"]
    assert "err" in r.stderr
    r = vzctl(rt, "exec2", str(ctid), "cat", "/etc/os-release")
    assert r.returncode == 0 and "Busybox test" in r.stdout
    r = vzctl(rt, "exec", str(ctid), "-", stdin="echo from-stdin\nexit 3\n")
    assert r.returncode == 3 and "from-stdin" in r.stdout
    r = vzctl(rt, "exec2", str(ctid), "no-such-command")    # the shell's status, as OpenVZ
    assert r.returncode == 127 and "not found" in r.stderr
    lst = vzlist(rt, "-H", "-o", "ctid,status,hostname,layout")
    assert f"{ctid} running ve{ctid}" in " ".join(lst.stdout.split())
    if lay == "overlay":  # writes land in the VE's upper dir, never in the shared copy
        assert vzctl(rt, "exec", str(ctid), "echo mine > /etc/motd").returncode == 0
        assert (rt.paths.private(ctid) / "upper/etc/motd").read_text() == "mine\n"
        shared = (rt.paths.private(ctid) / "lower").resolve()
        assert not (shared / "etc/motd").exists()
    r = vzctl(rt, "stop", str(ctid))
    assert r.returncode == 0, r.stderr
    assert vzctl(rt, "status", str(ctid)).stdout.strip() == \
        f"CTID {ctid} exist unmounted down"
    assert vzctl(rt, "exec", str(ctid), "true").returncode != 0
    assert vzctl(rt, "restart", str(ctid)).returncode == 0
    assert vzctl(rt, "destroy", str(ctid), "--force").returncode == 0   # stops it first
    assert vzctl(rt, "status", str(ctid)).stdout.strip() == \
        f"CTID {ctid} deleted unmounted down"
    assert host_leftovers(rt, ctid) == []
    assert not any(rt.paths.root.joinpath("shared").iterdir())


def test_create_refuses_existing_and_leaves_nothing_on_failure(rt: Runtime,
                                                                tmp_path: Path) -> None:
    rt.create(9203, "busybox-1")
    try:
        r = vzctl(rt, "create", "9203", "--ostemplate", "busybox-1")
        assert r.returncode != 0 and "already exists" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        rt.destroy(9203)
    r = vzctl(rt, "create", "9204", "--ostemplate", "nosuch-1")
    assert r.returncode != 0 and "no cache named" in r.stderr and "hint" in r.stderr
    # a corrupt cache: unpack fails half-way; no conf, no private area remain
    bad = rt.cache_dirs[0] / "broken-1-x86_64-minimal.tar.zst"
    good = (rt.cache_dirs[0] / f"{BB}.tar.zst").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    for lay in ("plain", "overlay"):
        r = vzctl(rt, "create", "9204", "--ostemplate", "broken-1", "--layout", lay)
        assert r.returncode != 0, r.stdout
        assert "Traceback" not in r.stderr
        assert host_leftovers(rt, 9204) == []
    assert not any(rt.paths.root.joinpath("shared").iterdir())
    assert vzctl(rt, "create", "abc", "--ostemplate", BB).returncode == 2


def test_init_starts_rc2d_services_and_stops_them(rt: Runtime) -> None:
    ctid = 9210
    rt.create(ctid, "busybox-1")
    try:
        rc = rt.paths.private(ctid) / "etc/rc2.d"
        rc.mkdir(parents=True)
        (rc / "S20hello").write_text(
            "#!/bin/sh\n[ \"$1\" = start ] || exit 0\n"
            "(trap 'echo stopped > /root/svc; exit 0' TERM; echo running > /root/svc;"
            " while :; do sleep 1; done) &\n")
        (rc / "S20hello").chmod(0o755)
        rt.start(ctid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "running" not in sh(rt, ctid, "cat /root/svc")[1]:
            time.sleep(0.05)
        assert sh(rt, ctid, "cat /root/svc")[1].strip() == "running"
        rt.stop(ctid)  # SIGTERM reaches the service through init
        assert (rt.paths.private(ctid) / "root/svc").read_text().strip() == "stopped"
    finally:
        rt.destroy(ctid)


def test_status_survives_stale_pidfile(rt: Runtime) -> None:
    rt.create(9205, "busybox-1")
    try:
        pid = rt.start(9205)
        os.kill(pid, 9)  # the VE dies behind vzctl's back
        deadline = time.monotonic() + 5
        while rt.state(9205).running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rt.paths.pidfile(9205).exists()
        assert rt.state(9205).line() == "CTID 9205 exist mounted down"
        # a pid file naming a live but unrelated process is stale too
        rt.paths.pidfile(9205).write_text(f"{os.getpid()} 1\n")
        assert not rt.state(9205).running
        assert rt.start(9205) > 0  # start cleans up what the dead VE left
        assert sh(rt, 9205, "echo alive")[1].strip() == "alive"
        os.kill(rt.init_pid(9205), 9)
        time.sleep(0.2)
        r = vzctl(rt, "stop", "9205")  # stop tidies up after a VE that died
        assert r.returncode == 0, r.stderr
        assert rt.state(9205).line() == "CTID 9205 exist unmounted down"
        assert vzctl(rt, "stop", "9205").returncode == 31     # VZ_VE_NOT_RUNNING
        assert vzctl(rt, "mount", "9205").returncode == 0
        assert (rt.paths.ve_root(9205) / "etc/os-release").exists()
        assert vzctl(rt, "umount", "9205").returncode == 0
        assert not layout.is_mounted(rt.paths.ve_root(9205))
    finally:
        rt.destroy(9205)


def test_network_ping_tcp_and_live_ipadd(rt: Runtime) -> None:
    ctid = 9206
    rt.create(ctid, "busybox-1", ipadd=["198.18.92.6"])
    try:
        rt.start(ctid)
        _code, out = sh(rt, ctid, "ls /sys/class/net")
        assert out.split() == ["eth0", "lo"]
        ping = ["ping", "-c1", "-W2"]
        assert subprocess.run([*ping, "198.18.92.6"], capture_output=True).returncode == 0
        # a TCP server in the VE, reached from the host
        assert sh(rt, ctid, "(echo hello-from-ve | nc -l -p 8080 >/dev/null 2>&1 &)")[0] == 0
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("198.18.92.6", 8080), timeout=2) as s:
                    data = s.recv(100)
                break
            except OSError:
                time.sleep(0.05)
        assert data == b"hello-from-ve\n"
        r = vzctl(rt, "set", str(ctid), "--ipadd", "fd5a::9206", "--ipadd", "198.18.92.7")
        assert r.returncode == 0, r.stderr
        assert subprocess.run([*ping, "fd5a::9206"], capture_output=True).returncode == 0
        assert subprocess.run([*ping, "198.18.92.7"], capture_output=True).returncode == 0
        assert rt.config(ctid).get("IP_ADDRESS") == "198.18.92.6"  # not saved
        r = vzctl(rt, "set", str(ctid), "--ipdel", "198.18.92.6", "--save")
        assert r.returncode == 0, r.stderr
        assert subprocess.run([*ping, "198.18.92.6"], capture_output=True).returncode != 0
        assert rt.config(ctid).get("IP_ADDRESS") == ""  # the saved list had only .6
        _code, out = sh(rt, ctid, "ip -o addr show eth0")
        assert "198.18.92.7" in out and "198.18.92.6" not in out
    finally:
        rt.destroy(ctid)
    assert not net.link_exists(rt.paths.host_ifname(ctid))


def test_set_hostname_dns_password(rt: Runtime) -> None:
    ctid = 9207
    rt.create(ctid, "busybox-1", hostname="before")
    try:
        r = vzctl(rt, "set", str(ctid), "--userpasswd", "root:s3cret")  # stopped VE
        assert r.returncode == 0, r.stderr
        shadow = (rt.paths.private(ctid) / "etc/shadow").read_text()
        assert shadow.startswith("root:$6$")
        assert not layout.is_mounted(rt.paths.ve_root(ctid))
        r = vzctl(rt, "set", str(ctid), "--hostname", "x")
        assert r.returncode != 0 and "--save" in r.stderr
        assert vzctl(rt, "set", str(ctid), "--name", "webby", "--save").returncode == 0
        assert vzctl(rt, "status", "webby").stdout.strip() == \
            f"CTID {ctid} exist unmounted down"
        assert vzctl(rt, "status", "nobody-has-this").returncode == 2
        rt.start(ctid)
        r = vzctl(rt, "set", str(ctid), "--hostname", "after.example", "--nameserver",
                  "198.18.0.53", "--searchdomain", "example", "--save")
        assert r.returncode == 0, r.stderr
        _code, out = sh(rt, ctid, "hostname; cat /etc/hostname /etc/resolv.conf /etc/hosts")
        assert out.split("\n")[0] == "after.example"
        assert "nameserver 198.18.0.53" in out and "search example" in out
        assert "127.0.1.1\tafter.example after" in out
        old = (rt.paths.private(ctid) / "etc/shadow").read_text()
        r = vzctl(rt, "set", str(ctid), "--userpasswd", "root:other")  # running VE
        assert r.returncode == 0, r.stderr
        assert (rt.paths.private(ctid) / "etc/shadow").read_text() != old
        r = vzctl(rt, "set", str(ctid), "--userpasswd", "ghost:pw")
        assert r.returncode != 0 and "chpasswd" in r.stderr
    finally:
        rt.destroy(ctid)


def test_enter_through_a_pty(rt: Runtime) -> None:
    ctid = 9208
    rt.create(ctid, "busybox-1", hostname="entered")
    rt.start(ctid)
    try:
        status, text = enter_session(rt, ctid, b"echo marker-$((6*7)); hostname; tty; exit 5\n")
        if status is None:
            pytest.fail(f"vzctl enter did not exit; it printed {text!r}")
        assert "marker-42" in text and "entered" in text
        assert "/dev/pts/" in text, text
        assert os.WEXITSTATUS(status) == 5
    finally:
        rt.destroy(ctid)


def test_debian_cache_end_to_end(rt: Runtime, tmp_path: Path) -> None:
    """With the builder's Debian cache, the real distribution runs; else busybox does."""
    found = find_debian_cache()
    if found is None:
        r2 = Runtime(rt.paths, rt.cache_dirs)
        name = "busybox-1"
    else:
        r2 = Runtime(rt.paths, [found[0], *rt.cache_dirs])
        name = found[1]
    ctid = 9209
    r2.create(ctid, name, hostname="deb", ipadd=["198.18.92.9"])
    try:
        r2.start(ctid)
        code, out = sh(r2, ctid, "cat /etc/os-release; ps -o pid,args 2>/dev/null || ps ax")
        assert code == 0, out
        if found is not None:
            assert "Debian" in out
            assert "iface eth0 inet manual" in (
                r2.paths.private(ctid) / "etc/network/interfaces").read_text()
        r = subprocess.run(["ping", "-c1", "-W2", "198.18.92.9"], capture_output=True)
        assert r.returncode == 0
        r2.stop(ctid)
    finally:
        r2.destroy(ctid)
    with pytest.raises(VeError):
        r2.config(ctid)


def test_failed_start_leaves_nothing_running(rt: Runtime) -> None:
    ctid = 9211
    rt.create(ctid, "busybox-1", ipadd=["198.18.92.11"])
    try:
        (rt.paths.private(ctid) / "bin/sh").unlink()  # init cannot be run
        r = vzctl(rt, "start", str(ctid))
        assert r.returncode == 1 and "start failed" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert rt.state(ctid).line() == f"CTID {ctid} exist unmounted down"
        assert not rt.cgroups.exists(str(ctid))
        assert not net.link_exists(rt.paths.host_ifname(ctid))
        assert not rt.paths.pidfile(ctid).exists()
    finally:
        rt.destroy(ctid)


def test_two_roots_run_the_same_ctid_without_touching_each_other(
        rt: Runtime, tmp_path: Path) -> None:
    """VE 9215 of a second VZ_ROOT gets its own cgroup and veth: starting, stopping
    and destroying it leaves VE 9215 of the first root running and reachable."""
    other = runtime_for(tmp_path / "second")
    ctid = 9215
    rt.create(ctid, "busybox-1", ipadd=["198.18.92.15"])
    other.create(ctid, "busybox-1", ipadd=["198.18.92.16"])
    ping = ["ping", "-c1", "-W2"]
    try:
        first_pid = rt.start(ctid)
        other.start(ctid)
        assert rt.state(ctid).running and rt.init_pid(ctid) == first_pid
        assert net.link_exists(rt.paths.host_ifname(ctid))
        assert net.link_exists(other.paths.host_ifname(ctid))
        other.stop(ctid)
        other.destroy(ctid)
        assert rt.state(ctid).running and rt.init_pid(ctid) == first_pid
        assert rt.cgroups.procs(str(ctid))
        assert subprocess.run([*ping, "198.18.92.15"], capture_output=True).returncode == 0
    finally:
        destroy_all(other)
        rt.destroy(ctid)
    assert host_leftovers(rt, ctid) == []


def test_vzlist_json_sort_and_hostname_filter_on_running_ves(rt: Runtime) -> None:
    """vzlist on real VEs: -j has every field with the kernel's numbers, -s -uptime puts
    the VE started first on top, -h filters by hostname (a shell pattern)."""
    import contextlib
    import json
    from typing import Any

    from vzpkg.cli.vzlist import FIELDS
    hosts = {9291: "ve9291", 9292: "ve9292", 9293: "other9293", 9294: "ve9294"}
    ours = set(hosts)
    try:
        for ctid, host in hosts.items():
            rt.create(ctid, "busybox-1", hostname=host)
        rt.start(9291)
        time.sleep(1.5)                     # 9291 has run longest
        rt.start(9292)
        rt.start(9293)                      # 9294 stays stopped
        # a task in 9292 that always wants a CPU
        assert sh(rt, 9292, "(while :; do :; done >/dev/null 2>&1 &)")[0] == 0

        def listed() -> dict[int, dict[str, Any]]:
            r = vzlist(rt, "-j")
            assert r.returncode == 0, r.stderr
            return {d["ctid"]: d for d in json.loads(r.stdout) if d["ctid"] in ours}

        deadline = time.monotonic() + 10
        while (data := listed())[9292]["laverage"] == 0:
            assert time.monotonic() < deadline, data[9292]
            time.sleep(0.1)
        assert set(data) == {9291, 9292, 9293}          # running only, without -a
        for ctid, d in data.items():
            assert set(d) == set(FIELDS)
            assert d["status"] == "running" and d["hostname"] == hosts[ctid]
            assert d["pid"] == rt.init_pid(ctid)
            assert isinstance(d["uptime"], float) and 0 < d["uptime"] < 600
            assert isinstance(d["laverage"], int)
            held = {bc.resource: bc for bc in rt.cgroups.counters(str(ctid))}
            assert isinstance(d["numproc"], int) and d["numproc"] >= 1
            assert d["numproc.l"] == held["numproc"].limit
            assert isinstance(d["physpages"], int) and d["physpages"] > 0
            assert d["physpages.l"] == held["physpages"].limit
        assert data[9292]["laverage"] >= 1
        assert data[9292]["numproc"] >= 2               # init and the spinning loop
        assert data[9291]["uptime"] > data[9292]["uptime"] + 1

        r = vzlist(rt, "-o", "ctid,uptime,laverage,numproc", "-s", "-uptime")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["CTID", "UPTIME", "LAVERAGE", "NPROC"]
        rows = [ln.split() for ln in lines[1:] if int(ln.split()[0]) in ours]
        assert [int(x[0]) for x in rows][:1] == [9291]
        assert [int(x[0]) for x in rows].index(9291) < [int(x[0]) for x in rows].index(9292)
        for x in rows:
            assert x[1].startswith("000d00h:") and x[1].endswith("s")
            assert x[2].isdigit() and x[3].isdigit()

        r = vzlist(rt, "-H", "-o", "ctid", "-h", "ve92*")
        assert r.returncode == 0, r.stderr
        assert {int(c) for c in r.stdout.split()} & ours == {9291, 9292}
        r = vzlist(rt, "-a", "-H", "-o", "ctid,status", "-h", "ve92*")
        got = {int(ln.split()[0]): ln.split()[1] for ln in r.stdout.splitlines()}
        assert {c: s for c, s in got.items() if c in ours} == \
            {9291: "running", 9292: "running", 9294: "stopped"}
        r = vzlist(rt, "-j", "9294")                     # stopped: runtime values null
        d = json.loads(r.stdout)[0]
        assert d["status"] == "stopped" and d["uptime"] is None and d["numproc"] is None
    finally:
        for ctid in hosts:
            with contextlib.suppress(VeError):
                rt.destroy(ctid)
