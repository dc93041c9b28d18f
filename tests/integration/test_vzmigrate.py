"""vzmigrate between two hosts on this machine: the second one is a VZ_ROOT of its own
in a network namespace of its own, reached over a real ssh connection."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_ve_chkpnt import Client, _criu_or_skip, start_counter
from tests.migrate_helpers import HOST_IP, SecondHost, second_host, vzctl_command
from tests.runtime_helpers import destroy_all, runtime_for, sh, vzctl_cli
from vzpkg.runtime import state
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 1552
IP = "10.215.0.52"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, SecondHost]]:
    _criu_or_skip()
    for tool in ("sshd", "rsync", "ssh"):
        if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin")):
            pytest.skip(f"{tool} is not installed (tools/install-system-deps installs it)")
    base = tmp_path_factory.mktemp("migrate")
    rt = runtime_for(base)
    with second_host(base) as h2:
        yield rt, h2
        subprocess.run(h2.vzctl_argv("destroy", str(CTID), "--force"), capture_output=True,
                       check=False)
    destroy_all(rt)


def vzmigrate(rt: Runtime, h2: SecondHost, *args: str,
              remote_vzctl: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    return subprocess.run([sys.executable, "-P", "-m", "vzpkg.cli.vzmigrate",
                           "--ssh", " ".join(h2.ssh_opts), "--remote-vzroot", str(h2.vzroot),
                           "--remote-vzctl", remote_vzctl or h2.vzctl, *args],
                          env=env, capture_output=True, text=True, check=False, timeout=300)


def remote_status(h2: SecondHost, ctid: int) -> str:
    return subprocess.run(h2.vzctl_argv("status", str(ctid)), capture_output=True,
                          text=True, check=False).stdout.strip()


def test_online_migration_keeps_processes_connection_and_address(
        hosts: tuple[Runtime, SecondHost]) -> None:
    rt, h2 = hosts
    rt.create(CTID, "busybox-1", ipadd=[IP])
    start_counter(rt, CTID)
    c = Client(IP, source=HOST_IP)
    try:
        assert [c.ask(), c.ask()] == [1, 2]
        # a destination whose vzctl cannot restore (no CRIU there): the VE runs here
        # again, same processes, same connection; the destination keeps nothing
        bad = f"env CRIU=/nonexistent/criu {vzctl_command()}"
        r = vzmigrate(rt, h2, "--online", h2.dest, str(CTID), remote_vzctl=bad)
        assert r.returncode != 0 and "migration" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert rt.state(CTID).running
        assert c.ask() == 3
        assert remote_status(h2, CTID).endswith("deleted unmounted down")
        assert not (h2.vzroot / "private" / str(CTID)).exists()

        r = vzmigrate(rt, h2, "--online", "--json", h2.dest, str(CTID))
        assert r.returncode == 0, r.stderr
        assert remote_status(h2, CTID) == f"CTID {CTID} exist mounted running"
        assert not rt.paths.conf(CTID).exists()
        assert not rt.paths.private(CTID).exists()
        h2.route_to(IP)                    # the address now lives over there
        assert c.ask() == 4                # same connection, same process
        # the VE has its address at the destination
        out = subprocess.run(h2.vzctl_argv("exec", str(CTID), "ip -4 addr show eth0"),
                             capture_output=True, text=True, check=False).stdout
        assert IP in out
    finally:
        c.close()


def test_migrating_to_a_host_that_has_the_ctid_is_refused(
        hosts: tuple[Runtime, SecondHost]) -> None:
    rt, h2 = hosts
    if not rt.paths.conf(CTID).exists():
        rt.create(CTID, "busybox-1")
    if remote_status(h2, CTID).split()[2] != "exist":
        r = subprocess.run(h2.vzctl_argv("create", str(CTID), "--ostemplate", "busybox-1"),
                           capture_output=True, text=True, check=False,
                           env={**os.environ})
        if r.returncode != 0:   # the second host has no cache: give it the VE's files
            r2 = vzmigrate(rt, h2, h2.dest, str(CTID))
            assert r2.returncode == 0, r2.stderr
            rt.create(CTID, "busybox-1")
    r = vzmigrate(rt, h2, h2.dest, str(CTID))
    assert r.returncode == 44, r.stderr
    assert "already exists" in r.stderr
    assert rt.paths.conf(CTID).exists() and rt.paths.private(CTID).exists()
    vzctl_cli(rt, "destroy", str(CTID))


def test_offline_migration_moves_a_running_ve_and_starts_it_there(
        hosts: tuple[Runtime, SecondHost]) -> None:
    rt, h2 = hosts
    ctid = CTID + 1
    rt.create(ctid, "busybox-1", ipadd=["10.215.0.54"])
    (rt.paths.private(ctid) / "root" / "marker").write_text("moved\n")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    try:
        r = vzmigrate(rt, h2, h2.dest, str(ctid))
        assert r.returncode == 0, r.stderr
        assert remote_status(h2, ctid) == f"CTID {ctid} exist mounted running"
        assert not rt.paths.conf(ctid).exists()
        conf = (h2.vzroot / "etc" / "vz" / "conf" / f"{ctid}.conf").read_text()
        assert f'VE_PRIVATE="{h2.vzroot}/private/{ctid}"' in conf
        assert (h2.vzroot / "private" / str(ctid) / "root" / "marker").read_text() == "moved\n"
    finally:
        subprocess.run(h2.vzctl_argv("destroy", str(ctid), "--force"), capture_output=True,
                       check=False)


def test_lazy_migration_keeps_the_counter_and_removes_the_source_after_the_last_page(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """Post-copy (--lazy): a failed restore there leaves the VE running here (restored
    from its own page server); then the VE runs there, its memory follows, and only
    once every page has arrived is it removed here."""
    rt, h2 = hosts
    ctid, ip = CTID + 2, "10.215.0.55"
    rt.create(ctid, "busybox-1", ipadd=[ip])
    start_counter(rt, ctid)
    c = Client(ip, source=HOST_IP)
    try:
        assert [c.ask(), c.ask()] == [1, 2]
        bad = f"env CRIU=/nonexistent/criu {vzctl_command()}"
        r = vzmigrate(rt, h2, "--online", "--lazy", h2.dest, str(ctid), remote_vzctl=bad)
        assert r.returncode == 1 and "migration" in r.stderr, r.stderr
        assert "no working CRIU" in r.stderr and "Traceback" not in r.stderr
        assert rt.state(ctid).running
        assert c.ask() == 3                # the same processes, from the same memory
        assert remote_status(h2, ctid).endswith("deleted unmounted down")

        r = vzmigrate(rt, h2, "--online", "--lazy", "--json", h2.dest, str(ctid))
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["lazy"] and "pages" in rep["steps"] and rep["frozen_seconds"] < 30
        assert remote_status(h2, ctid) == f"CTID {ctid} exist mounted running"
        assert not rt.paths.conf(ctid).exists() and not rt.paths.private(ctid).exists()
        # every page of every process arrived before the source went
        log = (h2.vzroot / "dump" / f"Dump.{ctid}.d.lazy-pages.log").read_text()
        counts = re.findall(r"UFFD transferred pages: \((\d+)/(\d+)\)", log)
        assert counts and all(a == b for a, b in counts), log[-2000:]
        src = (rt.paths.root / "dump" / f"Dump.{ctid}.d.log").read_text()
        assert "Lazy pages transfer finished successfully" in src
        h2.route_to(ip)
        assert c.ask() == 4                # same connection, same process
        assert (ip in subprocess.run(h2.vzctl_argv("exec", str(ctid), "ip -4 addr show eth0"),
                                     capture_output=True, text=True, check=False).stdout)
        assert Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "0"
    finally:
        c.close()
        subprocess.run(h2.vzctl_argv("destroy", str(ctid), "--force"), capture_output=True,
                       check=False)
        subprocess.run(["ip", "route", "del", f"{ip}/32"], capture_output=True, check=False)


def _find_process(*words: bytes) -> int | None:
    """The pid of a process whose command line has each of *words* as a word."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w in argv for w in words):
            return int(pid)
    return None


def _page_server(root: Path, ctid: int) -> int | None:
    """The source's CRIU (the page server of VE *ctid*'s lazy dump)."""
    return _find_process(b"--lazy-pages", f"{root}/dump/.chkpnt.{ctid}".encode())


def _kill_page_server(root: Path, ctid: int) -> bool:
    """SIGKILL the source's CRIU (the page server of VE *ctid*'s lazy dump)."""
    pid = _page_server(root, ctid)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid is not None


def _hold_memory(rt: Runtime, ctid: int) -> None:
    """160 MB in a shell's memory: some time for its pages to travel (the shell has
    a command after its sleep, so that it does not become the sleep)."""
    code, out = sh(rt, ctid, "setsid sh -c 'x=$(head -c 160000000 /dev/zero | tr "
                             "\"\\\\000\" a); echo held > /tmp/held; sleep 1000; echo ${#x}' "
                             "</dev/null >/dev/null 2>&1 & "
                             "for i in $(seq 150); do [ -e /tmp/held ] && exit 0; "
                             "sleep 0.2; done; exit 1")
    assert code == 0, out


def _lazy_vzmigrate(rt: Runtime, h2: SecondHost, ctid: int) -> subprocess.Popen[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    return subprocess.Popen([sys.executable, "-P", "-m", "vzpkg.cli.vzmigrate", "--ssh",
                             " ".join(h2.ssh_opts), "--remote-vzroot", str(h2.vzroot),
                             "--remote-vzctl", h2.vzctl, "--online", "--lazy", h2.dest,
                             str(ctid)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _when_it_runs_there(p: subprocess.Popen[str], act: Callable[[], object]) -> None:
    """Call *act* once vzmigrate *p* says the VE runs at the destination (its
    memory still on the way)."""
    assert p.stdout is not None
    for line in p.stdout:
        if "its memory follows" in line:
            act()
            return


def _end_both(rt: Runtime, h2: SecondHost, ctid: int,
              p: subprocess.Popen[str] | None = None) -> None:
    """After a test: vzmigrate *p* ended, VE *ctid* gone from both hosts."""
    if p is not None and p.poll() is None:
        p.kill()
    subprocess.run(h2.vzctl_argv("destroy", str(ctid), "--force"), capture_output=True,
                   check=False)
    vzctl_cli(rt, "destroy", str(ctid), "--force")


def test_a_lazy_migration_whose_pages_stop_coming_stops_the_ve_at_both_ends(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """The post-copy failure model: the source goes while pages are pending; the VE
    is stopped there (never left running on missing memory) and here, exit 45."""
    rt, h2 = hosts
    ctid = CTID + 3
    rt.create(ctid, "busybox-1")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    _hold_memory(rt, ctid)
    pipe_max = Path("/proc/sys/fs/pipe-max-size").read_text().strip()
    p = _lazy_vzmigrate(rt, h2, ctid)
    try:
        killed: list[bool] = []
        _when_it_runs_there(p, lambda: killed.append(_kill_page_server(rt.paths.root, ctid)))
        _, err = p.communicate(timeout=120)
        if p.returncode == 0 or not any(killed):
            pytest.skip("every page arrived before the page server was killed (a race "
                        "this test lost); nothing to check this time")
        assert p.returncode == 45, err
        assert "stopped on both hosts" in err and "Traceback" not in err
        assert remote_status(h2, ctid) == f"CTID {ctid} exist unmounted down"
        st = rt.state(ctid)
        assert st.exists and not st.running and not rt.cgroups.procs(str(ctid))
        # the host settings opened for the page server and the restore are closed
        assert Path("/proc/sys/fs/pipe-max-size").read_text().strip() == pipe_max
        assert Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "0"
    finally:
        _end_both(rt, h2, ctid, p)


def test_a_killed_destination_vzctl_never_leaves_the_ve_running_on_missing_pages(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """The destination's vzctl restore --page-stream is SIGKILLed while pages are
    pending: its guard (a session of its own) kills the VE there and records it as
    stopped, where before the VE ran on with zeros for the pages it never got; the
    source stops its frozen copy and vzmigrate exits 45, the files at both ends."""
    rt, h2 = hosts
    ctid = CTID + 4
    there = Runtime(VzPaths(h2.vzroot))
    rt.create(ctid, "busybox-1")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    _hold_memory(rt, ctid)

    def guard_log() -> str:
        log = h2.vzroot / "dump" / f"Dump.{ctid}.d.guard.log"
        return log.read_text() if log.exists() else ""

    with h2.slow_link():            # 160 MB take seconds: pages are pending
        p = _lazy_vzmigrate(rt, h2, ctid)
        try:
            init: list[int | None] = []

            def kill_vzctl_there() -> None:
                init.append(state.running_pid(there.paths.pidfile(ctid)))
                vzctl = _find_process(b"vzpkg.cli.vzctl", b"--page-stream",
                                      f"{h2.vzroot}/dump/Dump.{ctid}.d".encode())
                assert vzctl is not None
                os.kill(vzctl, signal.SIGKILL)
            _when_it_runs_there(p, kill_vzctl_there)
            _, err = p.communicate(timeout=120)
            if p.returncode == 0 or "complete" in guard_log():
                pytest.skip("every page arrived before the destination's vzctl was killed "
                            "(a race this test lost); nothing to check this time")
            assert init and init[0] is not None
            pid = init[0]
            assert p.returncode == 45, err
            assert "stopped on both hosts" in err and "Traceback" not in err
            # there: no process of the VE is left, and it is recorded as stopped
            deadline = time.monotonic() + 30
            while (state.proc_start_time(pid) is not None or there.cgroups.procs(str(ctid))
                   or remote_status(h2, ctid) != f"CTID {ctid} exist unmounted down"):
                assert time.monotonic() < deadline, (
                    remote_status(h2, ctid), there.cgroups.procs(str(ctid)), guard_log())
                time.sleep(0.2)
            log = guard_log()
            assert "before the last page" in log and "recorded as stopped" in log, log
            # here: stopped too, the files kept
            st = rt.state(ctid)
            assert st.exists and not st.running and not rt.cgroups.procs(str(ctid))
            assert (h2.vzroot / "private" / str(ctid)).is_dir()
            assert Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "0"
        finally:
            _end_both(rt, h2, ctid, p)


PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
UFFD = Path("/proc/sys/vm/unprivileged_userfaultfd")


def test_a_killed_vzmigrate_leaves_no_host_setting_changed_after_the_next_vzctl(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """vzmigrate SIGKILLed while its page server runs leaves fs.pipe-max-size at
    4 MiB (nothing of it runs to put it back); the next vzctl command puts the
    host's value back, from the record written before the change."""
    rt, h2 = hosts
    ctid = CTID + 5
    before = PIPE_MAX.read_text().strip()
    if int(before) >= 4 << 20:
        pytest.skip(f"fs.pipe-max-size is {before} here: vzmigrate does not raise it")
    rt.create(ctid, "busybox-1")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    _hold_memory(rt, ctid)
    with h2.slow_link():            # 160 MB take seconds: the page server runs on
        p = _lazy_vzmigrate(rt, h2, ctid)
        try:
            _when_it_runs_there(p, p.kill)
            p.wait()
            assert PIPE_MAX.read_text().strip() == str(4 << 20)    # left by the kill
            r = vzctl_cli(rt, "status", str(ctid))
            assert r.returncode == 0, r.stderr
            assert PIPE_MAX.read_text().strip() == before
        finally:
            if p.poll() is None:
                p.kill()
            _kill_page_server(rt.paths.root, ctid)   # the VE stops there, as above
            deadline = time.monotonic() + 30
            while " running" in remote_status(h2, ctid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _end_both(rt, h2, ctid)


def test_a_userfaultfd_window_left_open_is_closed_by_the_next_vzctl(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """A vzctl killed inside the restore's userfaultfd window leaves
    vm.unprivileged_userfaultfd=1 and its record (made here as it leaves them, its
    pid long gone); any vzctl command closes the window."""
    from vzpkg.runtime import hostset
    rt, _ = hosts
    if UFFD.read_text().strip() != "0":
        pytest.skip("vm.unprivileged_userfaultfd is not 0 here: nothing to close")
    hostset.DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    (hostset.DIR / "unprivileged_userfaultfd.orig").write_text("0")
    (hostset.DIR / "unprivileged_userfaultfd.999999999.1").write_text("")
    try:
        UFFD.write_text("1")
        r = vzctl_cli(rt, "status", str(CTID))
        assert r.returncode == 0, r.stderr
        assert UFFD.read_text().strip() == "0"
        assert not (hostset.DIR / "unprivileged_userfaultfd.orig").exists()
    finally:
        UFFD.write_text("0")
        (hostset.DIR / "unprivileged_userfaultfd.999999999.1").unlink(missing_ok=True)
        (hostset.DIR / "unprivileged_userfaultfd.orig").unlink(missing_ok=True)


def test_a_destination_whose_criu_fails_its_check_is_refused_before_the_freeze(
        hosts: tuple[Runtime, SecondHost], tmp_path: Path) -> None:
    """The destination's CRIU is new enough but fails 'criu check': vzmigrate
    --online, with or without --lazy, says so and stops before the VE freezes (its
    init is the same process, nothing is dumped here or copied there)."""
    rt, h2 = hosts
    ctid = CTID + 6
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\ncase \"$1\" in\n--version) echo 'Version: 4.2';;\n"
                    "check) echo 'Error (criu/cr-check.c:1): not on this kernel' >&2; "
                    "exit 1;;\n*) exit 1;;\nesac\n")
    fake.chmod(0o755)
    rt.create(ctid, "busybox-1")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    try:
        init = state.running_pid(rt.paths.pidfile(ctid))
        assert init is not None
        for how in (["--online"], ["--online", "--lazy"]):
            r = vzmigrate(rt, h2, *how, h2.dest, str(ctid),
                          remote_vzctl=f"env CRIU={fake} {vzctl_command()}")
            assert r.returncode == 1, (how, r.stderr)
            assert state.running_pid(rt.paths.pidfile(ctid)) == init, how
            assert "refused before the freeze" in r.stderr, r.stderr
            assert "'criu check' fails: Error (criu/cr-check.c:1)" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
            assert not list((rt.paths.root / "dump").glob(f"*{ctid}*")), how
            assert not (h2.vzroot / "private" / str(ctid)).exists(), how
            assert remote_status(h2, ctid).endswith("deleted unmounted down")
    finally:
        vzctl_cli(rt, "destroy", str(ctid), "--force")


def test_a_restore_that_hangs_is_killed_after_its_bound_and_the_dump_still_restores(
        hosts: tuple[Runtime, SecondHost], tmp_path: Path) -> None:
    """CRIU's restore that never ends (as one whose page server died did) is killed
    after $VZCTL_RESTORE_TIMEOUT: vzctl says so (exit 17), nothing of the VE is left
    running, and the same dump restores afterwards."""
    from vzpkg.runtime import criu
    rt, _ = hosts
    ctid = CTID + 7
    real = criu.find()
    hang = tmp_path / "criu"
    hang.write_text("#!/bin/sh\n[ \"$1\" = restore ] && exec sleep 1000\n"
                    f"exec {shlex.join(real.argv)} \"$@\"\n")
    hang.chmod(0o755)
    rt.create(ctid, "busybox-1")
    assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
    try:
        assert vzctl_cli(rt, "chkpnt", str(ctid)).returncode == 0
        env = {**os.environ, "VZ_ROOT": str(rt.paths.root), "CRIU": str(hang),
               "VZCTL_RESTORE_TIMEOUT": "3"}
        r = subprocess.run([str(Path(sys.executable).parent / "vzctl"), "restore",
                            str(ctid)], env=env, capture_output=True, text=True,
                           check=False, timeout=120)
        assert r.returncode == 17, r.stderr
        assert "did not finish within 3 s" in r.stderr and "Traceback" not in r.stderr
        # the hung "CRIU" ran in the VE's cgroup: nothing is left there
        assert not rt.state(ctid).running and not rt.cgroups.procs(str(ctid))
        r = vzctl_cli(rt, "restore", str(ctid))
        assert r.returncode == 0, r.stderr
        assert rt.state(ctid).running
    finally:
        vzctl_cli(rt, "destroy", str(ctid), "--force")


def test_a_ve_with_a_disk_limit_moves_with_its_files_and_its_limit(
        hosts: tuple[Runtime, SecondHost]) -> None:
    """A VE with DISKSPACE keeps its files in a disk image beside its (then empty)
    private area: migration moves the image, so the VE arrives with its files and its
    limit, stopped, running (offline) or live (its processes kept); post-copy of such
    a VE is refused before anything is copied or stopped."""
    rt, h2 = hosts
    ctid = CTID + 7
    try:
        for mode in ("stopped", "offline", "online"):
            assert vzctl_cli(rt, "create", str(ctid), "--ostemplate", "busybox-1",
                             "--diskspace", "40M").returncode == 0
            assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
            code, out = sh(rt, ctid, "echo moved > /root/marker && "
                                     "setsid sleep 1000 </dev/null >/dev/null 2>&1 & "
                                     "echo $!")
            assert code == 0, out
            sleeper = out.split()[-1]
            if mode == "stopped":
                assert vzctl_cli(rt, "stop", str(ctid)).returncode == 0
            if mode == "online":
                r = vzmigrate(rt, h2, "--online", "--lazy", h2.dest, str(ctid))
                assert r.returncode != 0 and "disk image" in r.stderr, r.stderr
                assert "Traceback" not in r.stderr and rt.state(ctid).running
                assert remote_status(h2, ctid).split()[2] == "deleted"
            r = vzmigrate(rt, h2, *(["--online"] if mode == "online" else []), h2.dest,
                          str(ctid))
            assert r.returncode == 0, r.stderr
            assert not rt.paths.conf(ctid).exists()
            assert not (rt.paths.private(ctid).parent / f"{ctid}.img").exists()
            if mode == "stopped":
                assert subprocess.run(h2.vzctl_argv("start", str(ctid)), capture_output=True,
                                      check=False).returncode == 0
            assert remote_status(h2, ctid) == f"CTID {ctid} exist mounted running"
            out = subprocess.run(h2.vzctl_argv("exec", str(ctid),
                                               "cat /root/marker; df -k / | tail -1; "
                                               f"cat /proc/{sleeper}/cmdline"),
                                 capture_output=True, text=True, check=False).stdout
            assert out.startswith("moved\n"), out
            assert 30 * 1024 < int(out.splitlines()[1].split()[1]) <= 40 * 1024, out
            assert ("sleep" in out.splitlines()[-1]) == (mode == "online"), out
            subprocess.run(h2.vzctl_argv("destroy", str(ctid), "--force"),
                           capture_output=True, check=False)
    finally:
        subprocess.run(h2.vzctl_argv("destroy", str(ctid), "--force"), capture_output=True,
                       check=False)
        if rt.paths.conf(ctid).exists():
            rt.destroy(ctid)
