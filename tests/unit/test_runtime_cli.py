"""vzctl/vzlist as a user meets them without root: help, usage errors, empty lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(prog: str, *args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(root)}
    return subprocess.run([str(BIN / prog), *args], env=env, capture_output=True, text=True,
                          check=False, timeout=60)


def test_help_teaches_with_examples(tmp_path: Path) -> None:
    r = run("vzctl", "--help", root=tmp_path)
    assert r.returncode == 0
    for word in ("create", "start", "stop", "exec", "exec2", "enter", "set", "destroy",
                 "vzctl create 101 --ostemplate debian-12", "VZ_ROOT"):
        assert word in r.stdout
    r = run("vzctl", "set", "--help", root=tmp_path)
    for opt in ("--cpuunits", "--ram", "--numproc", "--ipadd", "--ipdel", "--userpasswd",
                "--save", "--nameserver", "--hostname"):
        assert opt in r.stdout


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    r = run("vzctl", "start", "abc", root=tmp_path)
    assert r.returncode == 2 and "invalid CTID" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "etc/vz").mkdir(parents=True)
    (tmp_path / "etc/vz/vz.conf").write_text('VE_LAYOUT="plain"\n')     # no DEF_OSTEMPLATE
    r = run("vzctl", "create", "101", root=tmp_path)
    assert r.returncode == 2 and "--ostemplate" in r.stderr and "DEF_OSTEMPLATE" in r.stderr
    r = run("vzctl", "exec", "101", root=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_status_and_list_of_nothing(tmp_path: Path) -> None:
    r = run("vzctl", "status", "101", root=tmp_path)
    assert r.stdout.strip() == "CTID 101 deleted unmounted down"    # as OpenVZ's
    r = run("vzctl", "stop", "101", root=tmp_path)
    assert r.returncode == 14 and "does not exist" in r.stderr and "hint" in r.stderr
    r = run("vzlist", "-a", root=tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["CTID", "NPROC", "STATUS", "IP_ADDR",
                                                      "HOSTNAME"]
    r = run("vzlist", "-a", "-j", root=tmp_path)
    assert json.loads(r.stdout) == []
    r = run("vzlist", "-o", "ctid,bogus", root=tmp_path)
    assert r.returncode == 2 and "bogus" in r.stderr and "known fields" in r.stderr


def test_vzlist_reads_configs_of_stopped_ves(tmp_path: Path) -> None:
    conf = tmp_path / "etc/vz/conf"
    conf.mkdir(parents=True)
    (conf / "101.conf").write_text('HOSTNAME="alpha"\nIP_ADDRESS="10.0.0.1 fd00::1"\n'
                                   'OSTEMPLATE="debian-12-x86_64-minimal"\n')
    (conf / "102.conf").write_text('HOSTNAME="beta"\nVE_LAYOUT="overlay"\n')
    r = run("vzlist", root=tmp_path)
    assert r.stdout.split() == ["CTID", "NPROC", "STATUS", "IP_ADDR", "HOSTNAME"]
    r = run("vzlist", "-a", "-H", "-o", "ctid,hostname,status,layout,ostemplate",
            root=tmp_path)
    lines = [ln.split() for ln in r.stdout.splitlines()]
    assert lines == [["101", "alpha", "stopped", "plain", "debian-12-x86_64-minimal"],
                     ["102", "beta", "stopped", "overlay", "-"]]
    r = run("vzlist", "-S", "-1", root=tmp_path)
    assert r.stdout.split() == ["101", "102"]
    r = run("vzlist", "-j", "-o", "ctid,ip", "101", root=tmp_path)
    assert json.loads(r.stdout) == [{"ctid": 101, "ip": "10.0.0.1 fd00::1"}]
