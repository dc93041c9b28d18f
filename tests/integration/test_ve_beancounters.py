"""Each row of the beancounter table behaves as the table says, on this host's cgroups
(issue 14, section 2): enforced ones refuse the VE and count it in failcnt, accounted
ones show what the VE holds, refused ones are refused by `vzctl set`; bad values
change nothing.  Real VEs (CTIDs 9860-9869)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import (
    copy_host_tools,
    destroy_all,
    runtime_for,
    sh,
    vzctl_cli,
    wait_for,
)
from vzpkg.runtime.ubctable import UBCS, Mode
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9861
PROBE = Path(__file__).resolve().parents[1] / "probe" / "ubchold.c"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    base = tmp_path_factory.mktemp("ubc")
    r = runtime_for(base)
    r.create(CTID, "busybox-1")
    copy_host_tools(r.paths.private(CTID), ["flock"])
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build tests/probe/ubchold.c (tools/install-system-deps)")
    probe = r.paths.private(CTID) / "usr/local/bin/ubchold"
    subprocess.run(["gcc", "-static", "-O", "-o", str(probe), str(PROBE)], check=True)
    r.start(CTID)
    yield r
    destroy_all(r)


def ubc(rt: Runtime, ctid: int = CTID) -> dict[str, dict[str, int | None]]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    r = subprocess.run([str(Path(sys.executable).parent / "vzubc"), "-j", str(ctid)],
                       env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return {row["resource"]: row for row in json.loads(r.stdout)[str(ctid)]}


def vset(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    return vzctl_cli(rt, "set", str(CTID), *args)


def test_every_beancounter_is_shown_with_held_where_the_table_says(rt: Runtime) -> None:
    rows = ubc(rt)
    assert list(rows) == [u.resource for u in UBCS]
    v = rt.cgroups.version
    for u in UBCS:
        counted = rows[u.resource]["held"] is not None
        assert counted == (u.mode(v) is not Mode.REFUSED), u.key


def test_accounted_rows_count_what_the_ve_holds(rt: Runtime) -> None:
    # a listening TCP socket, a UDP socket, a file lock, a file in /dev/shm, open files
    code, out = sh(rt, CTID, "nc -l -p 8080 </dev/null >/dev/null 2>&1 & "
                   "nc -u -l -p 5353 </dev/null >/dev/null 2>&1 & "
                   "flock /tmp/lockfile sleep 60 </dev/null >/dev/null 2>&1 & "
                   "dd if=/dev/zero of=/dev/shm/blob bs=1M count=8 2>/dev/null; echo ok")
    assert code == 0 and "ok" in out, out
    time.sleep(0.5)
    rows = ubc(rt)
    held = {k: r["held"] for k, r in rows.items()}
    assert held["numtcpsock"] and held["numtcpsock"] >= 1, held
    assert held["numothersock"] and held["numothersock"] >= 1, held
    assert held["numflock"] and held["numflock"] >= 1, held
    assert held["numfile"] and held["numfile"] >= 6, held
    assert held["shmpages"] and held["shmpages"] >= 8 * 256, held     # 8 MiB in pages
    assert held["kmemsize"] and held["kmemsize"] > 0, held
    assert held["physpages"] and held["privvmpages"] and held["numproc"], held
    # maxheld of a counted row keeps the most seen
    sh(rt, CTID, "killall nc flock; rm -f /dev/shm/blob")   # (busybox: no pkill)
    time.sleep(0.3)
    again = ubc(rt)
    assert (again["numtcpsock"]["maxheld"] or 0) >= 1
    assert (again["shmpages"]["held"] or 0) < 8 * 256


def test_unread_tcp_data_counts_in_tcprcvbuf(rt: Runtime) -> None:
    # a listener whose accepted socket nobody reads, and 64 KiB sent to it
    code, out = sh(rt, CTID, "nc -l -p 8082 -e sleep 30 </dev/null >/dev/null 2>&1 & "
                   "sleep 0.3; (dd if=/dev/zero bs=64K count=1 2>/dev/null | "
                   "nc 127.0.0.1 8082 >/dev/null 2>&1 &); sleep 1; echo ok")
    assert code == 0 and "ok" in out, out
    try:
        row = ubc(rt)["tcprcvbuf"]
        assert (row["held"] or 0) >= 60000, row
    finally:
        sh(rt, CTID, "killall nc")


def test_numproc_refuses_forks_past_the_limit(rt: Runtime) -> None:
    before = ubc(rt)["numproc"]
    r = vset(rt, "--numproc", "12:12")
    assert r.returncode == 0, r.stderr
    try:
        _, out = sh(rt, CTID, "for i in $(seq 30); do sleep 3 & done 2>&1; wait; echo done")
        assert "can't fork" in out or "Resource temporarily unavailable" in out, out
        row = ubc(rt)["numproc"]
        assert row["limit"] == 12 and row["barrier"] == 12
        assert (row["failcnt"] or 0) > (before["failcnt"] or 0)
    finally:
        assert vset(rt, "--numproc", "unlimited").returncode == 0


@pytest.mark.parametrize("option,row", [("--ram", "physpages"),
                                        ("--privvmpages", "privvmpages")])
def test_memory_limits_hit_count_in_failcnt(rt: Runtime, option: str, row: str) -> None:
    before = ubc(rt)[row]["failcnt"] or 0
    r = vset(rt, option, "48M", "--swap", "0") if option == "--ram" else \
        vset(rt, option, "48M")
    assert r.returncode == 0, r.stderr
    try:
        # a 96 MiB buffer, touched: past the limit (the kernel reclaims, then kills)
        _, out = sh(rt, CTID, "dd if=/dev/zero of=/dev/null bs=96M count=1; echo rc=$?")
        after = ubc(rt)[row]
        assert after["limit"] == 48 * 256, after
        assert (after["failcnt"] or 0) > before, (after, out)
        assert "rc=0" not in out, out
    finally:
        undo = ("--ram", "unlimited", "--swap", "unlimited") if option == "--ram" else \
            (option, "unlimited")
        assert vset(rt, *undo).returncode == 0


def test_tcp_buffers_and_oom_guarantee_reach_their_controls(rt: Runtime) -> None:
    r = vset(rt, "--tcpsndbuf", "1M:2M", "--tcprcvbuf", "1M:3M", "--oomguarpages", "16M")
    assert r.returncode == 0, r.stderr
    try:
        cg = rt.cgroups
        if cg.version == 1:
            g = cg.group("memory", str(CTID))  # type: ignore[attr-defined]
            assert (g / "memory.kmem.tcp.limit_in_bytes").read_text().strip() == str(5 << 20)
            assert "OOMGUARPAGES is accounted, not enforced" in r.stdout + r.stderr
        else:
            g = cg.group(str(CTID))  # type: ignore[attr-defined]
            assert (g / "memory.low").read_text().strip() == str(16 << 20)
        rows = ubc(rt)
        assert rows["tcpsndbuf"]["limit"] == 2 << 20 and rows["tcprcvbuf"]["barrier"] == 1 << 20
    finally:
        vset(rt, "--tcpsndbuf", "unlimited", "--tcprcvbuf", "unlimited",
             "--oomguarpages", "unlimited")


def test_refused_accounted_and_bad_values(rt: Runtime) -> None:
    conf = rt.paths.conf(CTID).read_text()
    live = rt.paths.livefile(CTID)
    live_before = live.read_text() if live.exists() else None
    cases = [("--numiptent", "100", "NUMIPTENT cannot be enforced or counted"),
             ("--numfile", "-5", "is not a number"),
             ("--kmemsize", "1:2:3", "is not 'barrier:limit'"),
             ("--privvmpages", "9" * 30, "too large"),
             ("--numflock", "20:10", "barrier must not be above the limit"),
             ("--shmpages", "12X", "is not a size")]
    for option, value, says in cases:
        r = vset(rt, option, value, "--numproc", "77", "--save")
        assert r.returncode == 2, (option, r.stderr)
        assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert rt.paths.conf(CTID).read_text() == conf            # nothing changed
    assert (live.read_text() if live.exists() else None) == live_before
    assert ubc(rt)["numproc"]["limit"] != 77
    ok = vset(rt, "--numiptent", "unlimited", "--kmemsize", "64M", "--save")
    assert ok.returncode == 0, ok.stderr
    assert "KMEMSIZE is accounted, not enforced" in ok.stdout + ok.stderr
    assert f'KMEMSIZE="{64 << 20}:{64 << 20}"' in rt.paths.conf(CTID).read_text()
    assert ubc(rt)["kmemsize"]["limit"] == 64 << 20


def test_vzlist_fields(rt: Runtime) -> None:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    r = subprocess.run([str(Path(sys.executable).parent / "vzlist"), "-j", "-o",
                        "ctid,numfile,numfile.m,kmemsize,privvmpages.l,numiptent,"
                        "numiptent.l", str(CTID)], env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["numfile"] > 0 and row["numfile.m"] >= row["numfile"]
    assert row["kmemsize"] > 0 and row["numiptent"] is None


def test_iolimit_throttles_the_ves_disk(rt: Runtime) -> None:
    from vzpkg.runtime import iolimit
    disk = iolimit.disk_of(rt.paths.private(CTID))
    if disk is None:      # (a VZ_ROOT on tmpfs: the warning is the behaviour)
        r = vset(rt, "--iolimit", "1")
        assert r.returncode == 0 and "IOLIMIT/IOPSLIMIT has no effect" in r.stdout + r.stderr
        return
    r = vset(rt, "--iolimit", "1", "--iopslimit", "400")      # 1 MB/s, as in OpenVZ
    assert r.returncode == 0, r.stderr
    cg = rt.cgroups
    try:
        if cg.version == 1:
            g = cg.group("blkio", str(CTID))  # type: ignore[attr-defined]
            assert f"{disk} {1 << 20}" in (g / "blkio.throttle.write_bps_device").read_text()
            assert f"{disk} 400" in (g / "blkio.throttle.read_iops_device").read_text()
        else:
            g = cg.group(str(CTID))  # type: ignore[attr-defined]
            assert f"{disk} rbps={1 << 20} wbps={1 << 20} riops=400 wiops=400" in \
                (g / "io.max").read_text()
        t = time.monotonic()
        code, out = sh(rt, CTID, "dd if=/dev/zero of=/root/io bs=64K count=48 oflag=direct"
                       " 2>&1; rm -f /root/io")
        took = time.monotonic() - t
        assert code == 0, out
        assert took >= 1.5, f"3 MiB of direct writes at 1 MB/s took {took:.2f}s"
    finally:
        assert vset(rt, "--iolimit", "0", "--iopslimit", "0").returncode == 0
    if cg.version == 1:
        assert disk not in (g / "blkio.throttle.write_bps_device").read_text()


def hold(rt: Runtime, what: str, n: int) -> str:
    """Start ``ubchold WHAT N`` in the VE (tests/probe/ubchold.c): it takes the
    resource, says ``held N``, and keeps it until killed."""
    code, out = sh(rt, CTID, f"/usr/local/bin/ubchold {what} {n} >/tmp/{what}.out 2>&1 & "
                   f"for i in $(seq 100); do grep -q held /tmp/{what}.out && break; "
                   f"sleep 0.1; done; cat /tmp/{what}.out")
    assert code == 0 and "held" in out, out
    return out


def release(rt: Runtime) -> None:
    code, out = sh(rt, CTID, "kill $(pidof ubchold); for i in $(seq 100); do "
                   "pidof ubchold >/dev/null || exit 0; sleep 0.1; done; exit 1")
    assert code == 0, f"ubchold outlived kill: {out}"


# what the VE takes, how much of it, the row, what that shows at least, the option
HELD = [("mlock", 8, "lockedpages", 8 * 256, "--lockedpages"),      # 8 MiB in pages
        ("sigq", 12, "numsiginfo", 12, "--numsiginfo"),
        ("pty", 3, "numpty", 3, "--numpty"),
        ("ptm", 3, "numpty", 3, "--numpty"),                       # masters alone
        ("dgram", 20, "dgramrcvbuf", 20 * 1000, "--dgramrcvbuf")]


@pytest.mark.parametrize("what,n,row,least,option", HELD)
def test_what_a_ve_holds_shows_in_its_row(rt: Runtime, what: str, n: int, row: str,
                                          least: int, option: str) -> None:
    """LOCKEDPAGES, NUMSIGINFO, NUMPTY and DGRAMRCVBUF count what a process in the
    VE takes (mlock, blocked real-time signals, ptys, unread datagrams), and let it
    go when the process ends."""
    before = ubc(rt)[row]
    try:
        assert f"held {n}" in hold(rt, what, n)
        now = ubc(rt)[row]
        assert (now["held"] or 0) - (before["held"] or 0) >= least, (before, now)
        assert (now["maxheld"] or 0) >= (now["held"] or 0)
    finally:
        release(rt)
    wait_for(lambda: (ubc(rt)[row]["held"] or 0) < least, 10,
             f"{row} to fall when the process ends")
    assert (ubc(rt)[row]["maxheld"] or 0) >= least


@pytest.mark.parametrize("what,n,row,least,option",
                         [h for h in HELD if h[0] != "ptm"])
def test_an_accounted_row_does_not_refuse_the_ve(rt: Runtime, what: str, n: int, row: str,
                                                 least: int, option: str) -> None:
    """The table says these four are accounted on both cgroup versions: a limit is
    stored and shown, vzctl set says it is not enforced, and the VE may go past it
    (held above the limit, nothing refused, failcnt 0)."""
    u = next(u for u in UBCS if u.resource == row)
    assert u.mode(rt.cgroups.version) is Mode.ACCOUNTED
    r = vset(rt, option, "1:1")
    assert r.returncode == 0, r.stderr
    assert f"{u.key} is accounted, not enforced" in r.stdout + r.stderr
    try:
        assert f"held {n}" in hold(rt, what, n)
        now = ubc(rt)[row]
        assert now["limit"] == 1 and (now["held"] or 0) > 1, now
        assert now["failcnt"] == 0, now
    finally:
        release(rt)
        assert vset(rt, option, "unlimited").returncode == 0
