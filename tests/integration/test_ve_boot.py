"""Host boot: the VEs marked ONBOOT=yes start in BOOTORDER through the host's unit,
the others stay down; at shutdown the unit stops them all."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, vzctl_cli
from vzpkg.runtime import state
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

# ctid -> (ONBOOT, BOOTORDER)
VES = {9621: ("yes", "1"), 9622: ("yes", "5"), 9623: ("no", None), 9624: ("yes", None)}


@pytest.fixture()
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("boot"))
    for ctid, (onboot, order) in VES.items():
        r.create(ctid, "busybox-1")
        args = ["set", str(ctid), "--onboot", onboot, "--save"]
        if order:
            args += ["--bootorder", order]
        res = vzctl_cli(r, *args)
        assert res.returncode == 0, res.stderr
    yield r
    destroy_all(r)


def _unit(rt: Runtime, tmp_path: Path) -> configparser.ConfigParser:
    r = vzctl_cli(rt, "boot", "--install-unit", str(tmp_path))
    assert r.returncode == 0, r.stderr
    units = list(tmp_path.glob("vz*.service"))
    assert len(units) == 1
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(units[0])
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    return unit


def _run(unit: configparser.ConfigParser, key: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    name, _, value = unit["Service"]["Environment"].partition("=")
    env[name] = value
    return subprocess.run(shlex.split(unit["Service"][key]), env=env, capture_output=True,
                          text=True, check=False, timeout=300)


def test_boot_starts_the_onboot_ves_in_order(rt: Runtime, tmp_path: Path) -> None:
    assert vzctl_cli(rt, "boot", "--dry-run").stdout.split() == ["9622", "9621", "9624"]
    unit = _unit(rt, tmp_path)
    # a host that just booted: nothing runs, nothing is mounted
    assert not any(rt.state(c).running for c in VES)
    r = _run(unit, "ExecStart")
    assert r.returncode == 0, r.stdout + r.stderr
    started = {c: state.proc_start_time(p) for c in VES
               if (p := state.running_pid(rt.paths.pidfile(c))) is not None}
    assert set(started) == {9621, 9622, 9624}
    ticks = {c: info[1] for c, info in started.items() if info is not None}
    assert ticks[9622] <= ticks[9621] <= ticks[9624]
    assert "VE 9622: started" in r.stdout.splitlines()[0]
    # the unit's stop: every VE down, nothing left mounted
    r = _run(unit, "ExecStop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(rt.state(c).running or rt.state(c).mounted for c in VES)


def test_one_failing_ve_does_not_stop_the_others(rt: Runtime) -> None:
    (rt.paths.private(9622) / "proc").rename(rt.paths.private(9622) / "proc.x")
    (rt.paths.private(9622) / "proc").symlink_to("/etc")      # refused at start
    r = vzctl_cli(rt, "boot")
    assert r.returncode != 0
    assert "VE 9622" in r.stderr
    assert rt.state(9621).running and rt.state(9624).running
    assert not rt.state(9623).running
