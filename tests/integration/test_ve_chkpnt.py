"""vzctl chkpnt / restore through CRIU: a VE's processes and TCP connections survive,
a damaged dump is refused, and without a working CRIU chkpnt says what is missing."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh, vzctl_cli
from vzpkg.core.errors import VzError
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 1551
IP = "10.215.0.51"
PORT = 7000
COUNTER = "#!/bin/sh\ni=0\nwhile read l; do i=$((i+1)); echo $i; done\n"


def _criu_or_skip() -> None:
    from vzpkg.runtime import criu
    try:
        criu.find()
    except VzError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no working CRIU here: {exc.message} ({exc.hint})")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    _criu_or_skip()
    r = runtime_for(tmp_path_factory.mktemp("chkpnt"))
    r.create(CTID, "busybox-1", ipadd=[IP])
    yield r
    destroy_all(r)


def start_counter(rt: Runtime, ctid: int) -> None:
    """Start the VE (through vzctl start, as an administrator does) with a TCP server
    on PORT that answers each line with a counter kept in its shell's memory."""
    res = vzctl_cli(rt, "start", str(ctid))
    assert res.returncode == 0, res.stderr
    code, out = sh(rt, ctid, f"printf '{COUNTER}' > /counter.sh; chmod +x /counter.sh; "
                             f"setsid nc -ll -p {PORT} -e /counter.sh </dev/null "
                             ">/dev/null 2>&1 & sleep 0.3")
    assert code == 0, out


class Client:
    """A TCP connection from the host into the VE, kept across chkpnt/restore."""

    def __init__(self, ip: str, source: str | None = None) -> None:
        self.sock = socket.create_connection((ip, PORT), timeout=20,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rw")

    def ask(self) -> int:
        self.file.write("x\n")
        self.file.flush()
        return int(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_processes_and_tcp_connection_survive_chkpnt_and_restore(rt: Runtime,
                                                                 tmp_path: Path) -> None:
    start_counter(rt, CTID)
    c = Client(IP)
    try:
        assert [c.ask(), c.ask()] == [1, 2]
        dump = tmp_path / "Dump"
        res = vzctl_cli(rt, "chkpnt", str(CTID), "--dumpfile", str(dump))
        assert res.returncode == 0, res.stderr
        assert vzctl_cli(rt, "status", str(CTID)).stdout.split()[-1] == "down"
        assert not rt.state(CTID).mounted
        res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(dump))
        assert res.returncode == 0, res.stderr
        assert vzctl_cli(rt, "status", str(CTID)).stdout.split()[-1] == "running"
        # the same connection, the same process: the counter goes on
        assert c.ask() == 3
        # suspend / resume are the same commands, as in vzctl 4.x
        res = vzctl_cli(rt, "suspend", str(CTID))
        assert res.returncode == 0, res.stderr
        assert (rt.paths.root / "dump" / f"Dump.{CTID}").is_file()
        res = vzctl_cli(rt, "resume", str(CTID))
        assert res.returncode == 0, res.stderr
        assert c.ask() == 4
    finally:
        c.close()
        vzctl_cli(rt, "stop", str(CTID), "--fast")


def _damage(dump: Path, out: Path) -> None:
    """A copy of *dump* with one byte of a memory image changed."""
    shutil.copyfile(dump, out)
    with tarfile.open(dump) as tar:
        m = next(m for m in tar.getmembers() if m.name.startswith("pages-") and m.size)
    with open(out, "r+b") as f:
        f.seek(m.offset_data + m.size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_changed_or_truncated_dump_is_refused_and_nothing_changes(
        rt: Runtime, tmp_path: Path) -> None:
    start_counter(rt, CTID)
    dump = tmp_path / "Dump"
    res = vzctl_cli(rt, "chkpnt", str(CTID), "--dumpfile", str(dump))
    assert res.returncode == 0, res.stderr
    _damage(dump, tmp_path / "changed")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    for bad, why in ((tmp_path / "changed", "sha256"), (truncated, "")):
        res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(bad))
        assert res.returncode == 17, res.stderr
        assert "damaged or was changed" in res.stderr and why in res.stderr
        assert "Traceback" not in res.stderr
        st = rt.state(CTID)
        assert not st.running and not st.mounted
        assert not rt.cgroups.procs(str(CTID))
    res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(dump))
    assert res.returncode == 0, res.stderr
    assert rt.state(CTID).running
    vzctl_cli(rt, "stop", str(CTID), "--fast")


def test_a_changed_dump_directory_is_refused(rt: Runtime, tmp_path: Path) -> None:
    """The form vzmigrate copies: CRIU's images beside the manifest, checked in place."""
    from vzpkg.runtime import chkpnt
    start_counter(rt, CTID)
    d = tmp_path / "Dump.d"
    chkpnt.chkpnt(rt, CTID, d, as_dir=True)
    page = next(p for p in sorted(d.glob("pages-*.img")) if p.stat().st_size)
    good = page.read_bytes()
    page.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(d))
    assert res.returncode == 17 and "sha256" in res.stderr, res.stderr
    page.write_bytes(good)
    (d / "extra.img").write_bytes(b"x")
    res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(d))
    assert res.returncode == 17 and "extra.img" in res.stderr, res.stderr
    assert not rt.state(CTID).running and not rt.state(CTID).mounted
    (d / "extra.img").unlink()
    res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(d))
    assert res.returncode == 0, res.stderr
    vzctl_cli(rt, "stop", str(CTID), "--fast")


def test_without_a_working_criu_chkpnt_says_what_is_missing(rt: Runtime) -> None:
    start_counter(rt, CTID)
    env_bad = {"CRIU": "/nonexistent/criu"}
    old = {k: os.environ.get(k) for k in env_bad}
    os.environ.update(env_bad)
    try:
        res = vzctl_cli(rt, "chkpnt", str(CTID))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert res.returncode == 16, res.stderr
    assert "no working CRIU" in res.stderr and "/nonexistent/criu" in res.stderr
    assert "tools/criu-tree" in res.stderr
    assert rt.state(CTID).running       # nothing happened to the VE
    vzctl_cli(rt, "stop", str(CTID), "--fast")


def test_a_restore_whose_criu_cannot_start_says_why(rt: Runtime, tmp_path: Path) -> None:
    """The child that would run CRIU fails before CRIU runs (the CRIU that passed
    its check is no longer executable): the reason is the last line of the log,
    and the user's message quotes it."""
    from vzpkg.runtime import criu
    start_counter(rt, CTID)
    dump = tmp_path / "Dump"
    res = vzctl_cli(rt, "chkpnt", str(CTID), "--dumpfile", str(dump))
    assert res.returncode == 0, res.stderr
    wrapper = tmp_path / "criu"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(criu.find().argv)} \"$@\"\n")
    wrapper.chmod(0o755)
    old = os.environ.get("CRIU")
    os.environ["CRIU"] = str(wrapper)
    try:
        criu.find()                 # passes its check, remembered for this boot
        wrapper.chmod(0o644)        # (size and mtime unchanged: still taken as checked)
        res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(dump))
    finally:
        if old is None:
            os.environ.pop("CRIU", None)
        else:
            os.environ["CRIU"] = old
    assert res.returncode == 17, res.stderr
    why = f"running {wrapper}: PermissionError: [Errno 13] Permission denied"
    assert f"CRIU's restore did not start: {why}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    log = tmp_path / "Dump.restore.log"
    assert str(log) in res.stderr
    assert log.read_text().splitlines()[-1] == f"Error (vzctl, before CRIU ran): {why}"
    st = rt.state(CTID)
    assert not st.running and not st.mounted
    res = vzctl_cli(rt, "restore", str(CTID), "--dumpfile", str(dump))
    assert res.returncode == 0, res.stderr
    vzctl_cli(rt, "stop", str(CTID), "--fast")


def test_a_systemd_ve_is_restored_with_its_services(tmp_path_factory: pytest.TempPathFactory
                                                    ) -> None:
    from tests.runtime_helpers import find_debian_cache
    _criu_or_skip()
    found = find_debian_cache()
    if found is None:
        pytest.skip("no Debian cache built here (the network tests build one)")
    caches, name = found
    from vzpkg.runtime.paths import VzPaths
    rt = Runtime(VzPaths(tmp_path_factory.mktemp("chkpnt-systemd") / "vz"), [caches])
    ctid = 1553
    try:
        rt.create(ctid, name, ipadd=["10.215.0.53"])
        res = vzctl_cli(rt, "start", str(ctid), "--wait")
        assert res.returncode == 0, res.stderr
        code, out = sh(rt, ctid, "systemd-run --unit=vzcounter sh -c 'i=0; while :; do "
                                 "i=$((i+1)); echo $i > /run/cnt; sleep 0.1; done' "
                                 ">/dev/null 2>&1; sleep 0.5; cat /run/cnt")
        assert code == 0, out
        res = vzctl_cli(rt, "chkpnt", str(ctid))
        assert res.returncode == 0, res.stderr
        res = vzctl_cli(rt, "restore", str(ctid))
        assert res.returncode == 0, res.stderr
        code, out = sh(rt, ctid, "cat /run/cnt; systemctl is-active vzcounter; "
                                 "tail -n1 /proc/1/cgroup; systemctl daemon-reload && "
                                 "systemctl is-system-running; "
                                 "systemctl --failed --plain --no-legend")
        lines = out.split()
        assert int(lines[0]) > 1, out          # the unit's shell went on counting
        assert "active" in lines and lines[2].endswith("/init.scope"), out
        assert "running" in out or "degraded" in out, out
        failed = {ln.split()[0] for ln in out.splitlines() if ".service" in ln}
        # the console's terminal went away with the event helper's pty master
        assert failed <= {"console-getty.service"}, out
    finally:
        destroy_all(rt)
