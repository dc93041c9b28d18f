"""halt, poweroff and reboot inside a VE, as in OpenVZ: the host's event helper
(vzpkg.runtime.eventd) hears the VE's init end and stops the VE (nothing left
running or mounted) or starts it again; no process stays per VE."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.runtime_helpers import destroy_all, enter_session, runtime_for, vzctl_cli, wait_for
from vzpkg.runtime import layout, state
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9611


@pytest.fixture()
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("events"))
    r.create(CTID, "busybox-1", hostname="ev")
    yield r
    destroy_all(r)


def _init(rt: Runtime) -> int | None:
    return state.running_pid(rt.paths.pidfile(CTID))


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_reboot_inside_restarts_the_ve(rt: Runtime) -> None:
    r = vzctl_cli(rt, "start", str(CTID))
    assert r.returncode == 0, r.stderr
    first = _init(rt)
    assert first is not None
    helper = _parent(first)               # one helper, not a process per VE
    with open(f"/proc/{helper}/cmdline", "rb") as f:
        assert b"vzpkg.runtime.eventd" in f.read()
    r = vzctl_cli(rt, "exec", str(CTID), "reboot -f")
    wait_for(lambda: _init(rt) not in (None, first), 20, "the VE came back")
    assert rt.state(CTID).running and layout.is_mounted(rt.paths.ve_root(CTID))
    code = vzctl_cli(rt, "exec", str(CTID), "hostname")
    assert code.stdout.strip() == "ev", code.stdout + code.stderr


@pytest.mark.parametrize("command", ["halt -f", "poweroff -f"])
def test_halt_inside_stops_the_ve_and_leaves_nothing(rt: Runtime, command: str) -> None:
    r = vzctl_cli(rt, "start", str(CTID))
    assert r.returncode == 0, r.stderr
    vzctl_cli(rt, "exec", str(CTID), command)
    wait_for(lambda: not rt.paths.pidfile(CTID).exists(), 20, "the VE was cleaned up")
    st = rt.state(CTID)
    assert not st.running and not st.mounted
    assert rt.cgroups.procs(str(CTID)) == []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(rt.paths.ve_root(CTID)) not in f.read()
    assert vzctl_cli(rt, "status", str(CTID)).stdout.split()[-2:] == ["unmounted", "down"]
    r = vzctl_cli(rt, "start", str(CTID))      # and it starts again as usual
    assert r.returncode == 0, r.stderr


def test_console_shows_what_the_ve_wrote_and_detaches(rt: Runtime) -> None:
    r = vzctl_cli(rt, "start", str(CTID))
    assert r.returncode == 0, r.stderr
    r = vzctl_cli(rt, "exec", str(CTID), "echo hello-console > /dev/console")
    assert r.returncode == 0, r.stderr
    status, out = enter_session(rt, CTID, b"", timeout=3, command="console")
    assert "hello-console" in out, out      # written while nobody watched
    assert status is None                   # still attached: it waits for Esc .
    status, out = enter_session(rt, CTID, b"\x1b.", timeout=3, command="console")
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, out
    assert "detached" in out, out
    assert rt.state(CTID).running           # detaching leaves the VE alone
