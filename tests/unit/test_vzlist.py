"""vzlist's fields, sorting, filters and output, without root: VEs are CTID.conf files
under a temporary VZ_ROOT; "running" ones are real child processes named by a pid
file, in a cgroup2-shaped directory tree whose counter files the test writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cgroups_helpers import v1_tree, v2_tree
from vzpkg.cli import vzlist
from vzpkg.runtime import state, stats
from vzpkg.runtime.cgroups import CgroupsV1, CgroupsV2
from vzpkg.runtime.params import UNLIMITED
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ubctable import RESOURCES
from vzpkg.runtime.ve import Runtime

BIN = Path(sys.executable).parent

CONFS = {
    101: 'HOSTNAME="web1"\nNAME="alpha"\nDESCRIPTION="front end"\nIP_ADDRESS="10.0.0.1"\n'
         'NUMPROC="100:200"\nPHYSPAGES="0:512M"\nONBOOT="yes"\nBOOTORDER="9"\n'
         'CPUUNITS="2000"\n',
    102: 'HOSTNAME="web2"\nNAME="beta"\nDESCRIPTION="nightly backup"\nBOOTORDER="10"\n',
    103: 'HOSTNAME="db"\n',
    104: '',                                   # no hostname, name or description
}


def write_confs(root: Path, confs: dict[int, str]) -> VzPaths:
    paths = VzPaths(root)
    paths.conf_dir.mkdir(parents=True, exist_ok=True)
    for ctid, text in confs.items():
        paths.conf(ctid).write_text(text)
    return paths


@pytest.fixture
def stopped_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_confs(tmp_path, CONFS)
    monkeypatch.setenv("VZ_ROOT", str(tmp_path))
    return tmp_path


def out_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert vzlist.main(list(argv)) == 0
    return capsys.readouterr().out


def column(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()]


# -- stopped VEs: configuration only ------------------------------------------------------

def test_json_has_every_field_with_numbers_as_numbers(
        stopped_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(out_of(capsys, "-a", "-j"))
    assert [d["ctid"] for d in data] == [101, 102, 103, 104]
    for d in data:
        assert set(d) == set(vzlist.FIELDS)
    ve = data[0]
    assert ve["hostname"] == "web1" and ve["name"] == "alpha" and ve["status"] == "stopped"
    assert ve["onboot"] is True and data[1]["onboot"] is False
    assert ve["bootorder"] == 9 and ve["cpuunits"] == 2000
    # barriers and limits of a stopped VE come from its CTID.conf (pages for PHYSPAGES)
    assert (ve["numproc.b"], ve["numproc.l"]) == (100, 200)
    assert (ve["physpages.b"], ve["physpages.l"]) == (0, 512 * 256)
    # what only a running VE has is null
    for f in ("pid", "uptime", "laverage", "numproc", "numproc.m", "numproc.f", "physpages",
              "kmemsize", "swappages.m"):
        assert ve[f] is None, f
    assert data[3]["hostname"] is None and data[3]["numproc.l"] is None


def test_table_shows_dashes_and_openvz_headers(
        stopped_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = out_of(capsys, "-a", "-o", "ctid,numproc,numproc.b,numproc.l,physpages.l,uptime,"
                 "laverage,onboot")
    lines = [ln.split() for ln in out.splitlines()]
    assert lines[0] == ["CTID", "NPROC", "NPROC.B", "NPROC.L", "PHYSP.L", "UPTIME", "LAVERAGE",
                        "ONBOOT"]
    assert lines[1] == ["101", "-", "100", "200", "131072", "-", "-", "yes"]
    assert lines[4] == ["104", "-", "-", "-", "-", "-", "-", "no"]
    # numbers are right-aligned, text left
    assert out.splitlines()[1].startswith(" 101")


def test_sort_numeric_text_reverse_and_dashes_last(
        stopped_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # numeric: 9 before 10 (as text "10" < "9"); VEs without a BOOTORDER last
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid", "-s", "bootorder")) == \
        ["101", "102", "103", "104"]
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid", "-s", "-bootorder")) == \
        ["102", "101", "103", "104"]
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid", "--sort=-bootorder")) == \
        ["102", "101", "103", "104"]
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid,hostname", "-s", "hostname")) == \
        ["103", "101", "102", "104"]
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid", "-s", "-hostname")) == \
        ["102", "101", "103", "104"]
    assert column(out_of(capsys, "-a", "-H", "-o", "ctid", "-s", "-ctid")) == \
        ["104", "103", "102", "101"]
    # the sort field need not be shown; JSON is sorted too
    data = json.loads(out_of(capsys, "-a", "-j", "-o", "ctid", "-s", "-numproc.l"))
    assert data == [{"ctid": 101}, {"ctid": 102}, {"ctid": 103}, {"ctid": 104}]


def test_sort_rows_keeps_ties_in_ctid_order_both_ways() -> None:
    rows: list[vzlist.Row] = [{"ctid": 1, "x": 5}, {"ctid": 2, "x": None}, {"ctid": 3, "x": 5},
                              {"ctid": 4, "x": 7}, {"ctid": 5, "x": 1.5}]
    assert [r["ctid"] for r in vzlist.sort_rows(rows, "x")] == [5, 1, 3, 4, 2]
    assert [r["ctid"] for r in vzlist.sort_rows(rows, "x", True)] == [4, 1, 3, 5, 2]


def test_filters_are_shell_patterns(stopped_root: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert column(out_of(capsys, "-a", "-H", "-h", "web*")) == ["101", "102"]
    assert column(out_of(capsys, "-a", "-H", "-h", "web[2-9]")) == ["102"]
    assert column(out_of(capsys, "-a", "-H", "--hostname", "d?")) == ["103"]
    # a VE without a hostname matches no pattern, not even *
    assert column(out_of(capsys, "-a", "-H", "-h", "*")) == ["101", "102", "103"]
    assert column(out_of(capsys, "-a", "-H", "-N", "b*")) == ["102"]
    assert column(out_of(capsys, "-a", "-H", "--name_filter", "alpha")) == ["101"]
    assert column(out_of(capsys, "-a", "-H", "-d", "*backup*")) == ["102"]
    assert column(out_of(capsys, "-a", "-H", "-h", "web*", "-d", "front*")) == ["101"]
    assert out_of(capsys, "-a", "-H", "-h", "nomatch*") == ""
    # filters apply with -S and with CTIDs given too
    assert column(out_of(capsys, "-S", "-H", "-h", "web*")) == ["101", "102"]
    assert column(out_of(capsys, "-H", "-h", "web*", "101", "103")) == ["101"]


def test_default_lists_running_only_and_stopped_lists_stopped(
        stopped_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert out_of(capsys).split() == ["CTID", "NPROC", "STATUS", "IP_ADDR", "HOSTNAME"]
    assert out_of(capsys, "-S", "-1").split() == ["101", "102", "103", "104"]
    assert json.loads(out_of(capsys, "-1", "-j", "102")) == [{"ctid": 102}]


def test_name_column_and_names_as_arguments(stopped_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = out_of(capsys, "-a", "-n")
    assert out.splitlines()[0].split() == ["CTID", "NAME", "NPROC", "STATUS", "IP_ADDR",
                                           "HOSTNAME"]
    assert out.splitlines()[1].split()[:2] == ["101", "alpha"]
    assert out_of(capsys, "-a", "-n", "-H", "-o", "hostname").split("\n")[0].split() == \
        ["web1", "alpha"]
    assert column(out_of(capsys, "-H", "-o", "ctid", "beta", "101")) == ["101", "102"]
    assert out_of(capsys, "-H", "-o", "smart_name", "-a").split() == \
        ["alpha", "beta", "103", "104"]


def test_list_names_every_field_and_labels_laverage(capsys: pytest.CaptureFixture[str]) -> None:
    out = out_of(capsys, "-L")
    names = [line.split()[0] for line in out.splitlines()]
    assert names == list(vzlist.FIELDS)
    for f in ("laverage", "uptime", "description", "onboot", "bootorder", "numproc.f",
              "physpages.m", "swappages.b", "kmemsize.l"):
        assert f in names
    lav = next(line for line in out.splitlines() if line.startswith("laverage "))
    assert "not a decayed" in lav


def fake_runtime_files(tmp_path: Path) -> tuple[CgroupsV2, Path]:
    cg = tmp_path / "cg"
    v2_tree(cg, "101")
    return CgroupsV2(cg), cg


def test_every_resource_the_cgroups_report_is_a_field(tmp_path: Path) -> None:
    v2, _ = fake_runtime_files(tmp_path)
    found = {bc.resource for bc in v2.counters("101")}
    groups = v1_tree(tmp_path / "v1", "101")
    found |= {bc.resource for bc in CgroupsV1(
        {c: tmp_path / "v1" / c for c in groups}).counters("101")}
    assert found <= set(vzlist.UBC_RESOURCES)
    assert list(vzlist.UBC_RESOURCES) == list(RESOURCES)     # all of OpenVZ's, its order
    for res in RESOURCES:
        for suffix in ("", ".m", ".b", ".l", ".f"):
            assert res + suffix in vzlist.FIELDS


def test_usage_errors_name_the_field_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "VZ_ROOT": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "vzlist"), *args], env=env, capture_output=True,
                              text=True, check=False, timeout=60)

    for spec in ("bogus", "-bogus"):
        r = run("-a", "-s", spec)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert "unknown sort field 'bogus'" in r.stderr
        assert "laverage" in r.stderr and "numproc.f" in r.stderr   # the valid ones
    r = run("-o", "ctid,uptimes")
    assert r.returncode == 2 and "uptimes" in r.stderr and "Traceback" not in r.stderr
    r = run("nobody-has-this")
    assert r.returncode == 2 and "neither a CTID nor the name" in r.stderr
    r = run("--help")
    assert r.returncode == 0
    for text in ("-s -uptime", "-h 'web*'", "--name_filter", "--description", "-L",
                 "laverage", "not OpenVZ's decayed"):
        assert text in r.stdout, text
    r = run("-h")                           # -h is --hostname, as in OpenVZ
    assert r.returncode == 2 and "expected one argument" in r.stderr


def test_uptime_format() -> None:
    assert vzlist.fmt_uptime(0) == "000d00h:00m:00s"
    assert vzlist.fmt_uptime(3 * 86400 + 4 * 3600 + 5 * 60 + 6.9) == "003d04h:05m:06s"


# -- "running" VEs: real processes, a fake cgroup tree ---------------------------------------

BUSY = "while True: pass"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for p in made:
        p.kill()
        p.wait()


def spawn(made: list[subprocess.Popen[bytes]], *argv: str) -> int:
    p = subprocess.Popen(list(argv))
    made.append(p)
    return p.pid


def wait_state(pid: int, want: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while stats.task_states([pid]).get(want, 0) == 0:
        assert time.monotonic() < deadline, f"pid {pid} never in state {want}"
        time.sleep(0.02)


def test_running_ves_uptime_laverage_and_beancounters(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]],
        capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_confs(tmp_path / "vz", {201: 'HOSTNAME="old"\nNUMPROC="30:40"\n',
                                          202: 'HOSTNAME="new"\n', 203: 'HOSTNAME="off"\n'})
    paths.ensure()
    cgroot = tmp_path / "cg"
    groups = {c: v2_tree(cgroot, str(c), prefix=paths.cgroup_prefix) for c in (201, 202)}
    # VE 201: an init that sleeps and a task that spins; VE 202, a second later: init only
    init1 = spawn(procs, "sleep", "60")
    busy = spawn(procs, sys.executable, "-c", BUSY)
    time.sleep(1.2)
    init2 = spawn(procs, "sleep", "60")
    for ctid, pids in ((201, [init1, busy]), (202, [init2])):
        state.write_pidfile(paths.pidfile(ctid), pids[0])
        (groups[ctid] / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    for name, text in {"pids.current": "7", "pids.peak": "12", "pids.max": "40",
                       "pids.events": "max 3\n", "memory.current": str(100 * 4096),
                       "memory.peak": str(150 * 4096), "memory.max": str(64 << 20)}.items():
        (groups[201] / name).write_text(text)
    wait_state(init1, "S")
    wait_state(init2, "S")
    wait_state(busy, "R")
    rt = Runtime(paths, cgroups=CgroupsV2(cgroot, paths.cgroup_prefix))

    def show(*argv: str) -> str:
        assert vzlist.run_list(vzlist.parse_args(argv), lambda: rt) == 0
        return capsys.readouterr().out

    data = {d["ctid"]: d for d in json.loads(show("-a", "-j"))}
    old, new, off = data[201], data[202], data[203]
    assert old["status"] == new["status"] == "running" and off["status"] == "stopped"
    assert old["pid"] == init1 and new["pid"] == init2
    assert isinstance(old["uptime"], float) and isinstance(new["uptime"], float)
    assert old["uptime"] - new["uptime"] > 1.0
    assert 0 <= new["uptime"] < 60
    assert old["laverage"] == 1 and new["laverage"] == 0      # the spinning task only
    assert (old["numproc"], old["numproc.m"], old["numproc.b"], old["numproc.l"],
            old["numproc.f"]) == (7, 12, 30, 40, 3)       # barrier 30 from 201.conf
    assert (old["physpages"], old["physpages.m"], old["physpages.l"]) == (100, 150, 16384)
    assert new["numproc.l"] == UNLIMITED and new["physpages.f"] == 0
    assert off["uptime"] is None and off["laverage"] is None and off["numproc"] is None

    # longest-running first; the stopped VE (no uptime) last either way
    assert column(show("-a", "-H", "-o", "ctid,uptime,laverage,numproc", "-s", "-uptime")) \
        == ["201", "202", "203"]
    assert column(show("-a", "-H", "-o", "ctid", "-s", "uptime")) == ["202", "201", "203"]
    assert column(show("-a", "-H", "-o", "ctid", "-s", "-laverage")) == ["201", "202", "203"]
    lines = show("-o", "ctid,uptime,laverage,numproc.l").splitlines()
    assert lines[0].split() == ["CTID", "UPTIME", "LAVERAGE", "NPROC.L"]
    first = lines[1].split()
    assert first[0] == "201" and first[1].startswith("000d00h:0") and first[1].endswith("s")
    assert first[2:] == ["1", "40"]
    assert column(show("-H", "-o", "ctid")) == ["201", "202"]          # running only
    assert column(show("-S", "-H", "-o", "ctid")) == ["203"]
    assert column(show("-S", "-H", "-o", "ctid", "201", "203")) == ["203"]
    assert column(show("-H", "-o", "ctid", "-h", "?ld")) == ["201"]


SPINNERS = """\
import threading, time
def spin():
    while True:
        pass
for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(60)
"""


def test_task_states_count_threads(procs: list[subprocess.Popen[bytes]]) -> None:
    pid = spawn(procs, sys.executable, "-c", SPINNERS)
    deadline = time.monotonic() + 10
    while sum(stats.task_states([pid]).values()) < 3 or stats.runnable_tasks([pid]) < 1:
        assert time.monotonic() < deadline, stats.task_states([pid])
        time.sleep(0.02)
    assert sum(stats.task_states([pid]).values()) == 3   # the main thread, two spinners
    assert stats.task_states([2 ** 22 + 7]) == {}        # no such process: nothing, no error
    assert stats.runnable_tasks([]) == 0


def test_a_ve_vzctl_cannot_use_is_listed_with_a_warning(
        stopped_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vzlist -a goes on past a CTID.conf vzctl cannot use (VeConfigError): that VE is
    listed with what its file says and named on stderr; the others as always; exit 0."""
    paths = VzPaths(stopped_root)
    paths.conf(105).write_text('VE_LAYOUT="ploop"\nHOSTNAME="old"\nIP_ADDRESS="10.0.0.5"\n')
    paths.conf(106).write_text('HOSTNAME="typo"\nCPUUNITS="lots"\nNUMPROC="x:y"\n')
    assert vzlist.main(["-a", "-H", "-o", "ctid,hostname,ip,layout,cpuunits"]) == 0
    out, err = capsys.readouterr()
    assert [ln.split() for ln in out.splitlines()][-3:] == [
        ["104", "-", "-", "plain", "1000"], ["105", "old", "10.0.0.5", "ploop", "1000"],
        ["106", "typo", "-", "plain", "lots"]]
    assert column(out) == ["101", "102", "103", "104", "105", "106"]
    warns = err.splitlines()
    assert len(warns) == 2, err
    assert warns[0].startswith("vzlist: warning: VE 105 has VE_LAYOUT='ploop'")
    assert warns[1].startswith("vzlist: warning: VE 106: ") and "CPUUNITS" in warns[1]
    data = {d["ctid"]: d for d in json.loads(out_of(capsys, "-a", "-j"))}
    assert data[101]["conf_error"] is None
    assert "only plain and overlay" in data[105]["conf_error"]
    assert data[106]["numproc.b"] is None and data[106]["cpuunits"] == "lots"
    assert column(out_of(capsys, "-a", "-H", "-h", "typo")) == ["106"]
