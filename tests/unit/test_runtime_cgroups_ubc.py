"""vzubc and the beancounter table, against a cgroup2-shaped directory tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cgroups_helpers import v2_tree
from vzpkg.cli import vzubc
from vzpkg.runtime.config import VeConfig, ve_conf_path
from vzpkg.runtime.params import UNLIMITED
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ubc import Beancounter, format_table, to_json


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cgroot = tmp_path / "cgroup"
    vz = tmp_path / "vz"
    prefix = VzPaths(vz).cgroup_prefix      # this VZ_ROOT's VEs, not /vz's
    g = v2_tree(cgroot, "101", prefix=prefix)
    (g / "pids.current").write_text("7\n")
    (g / "pids.peak").write_text("40\n")
    (g / "pids.max").write_text("40\n")
    (g / "pids.events").write_text("max 9\n")
    (g / "memory.current").write_text(str(100 * 4096))
    (g / "memory.max").write_text(str(64 << 20))
    v2_tree(cgroot, "102", prefix=prefix)
    v2_tree(cgroot, "105")                  # VE 105 of /vz: not listed for this root
    VeConfig.parse('NUMPROC="30:40"\n').save(ve_conf_path(vz, "101"))
    VeConfig.parse('NUMPROC="1000"\n').save(ve_conf_path(vz, "103"))
    monkeypatch.setenv("VZ_ROOT", str(vz))
    return cgroot


def test_table_layout() -> None:
    rows = [Beancounter("numproc", 7, 40, 30, 40, 9),
            Beancounter("physpages", 100, 100, 0, UNLIMITED, 0)]
    text = format_table({"101": rows})
    lines = text.splitlines()
    assert lines[0] == "Version: 2.5"
    assert lines[1].split() == ["uid", "resource", "held", "maxheld", "barrier", "limit",
                                "failcnt"]
    assert lines[2].split() == ["101:", "numproc", "7", "40", "30", "40", "9"]
    assert lines[3].split() == ["physpages", "100", "100", "0", str(UNLIMITED), "0"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    assert "physpages" not in format_table({"101": rows}, only_failed=True)
    assert to_json({"101": rows})["101"][0] == {
        "resource": "numproc", "held": 7, "maxheld": 40, "barrier": 30, "limit": 40,
        "failcnt": 9}


def test_vzubc_one_ve(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vzubc.main(["--cgroup-root", str(host), "--raw", "101"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[-6]: line.split()[-5:] for line in out.splitlines()[2:]}
    assert len(rows) == 21                                   # every beancounter
    assert rows["numproc"] == ["7", "40", "30", "40", "9"]   # barrier 30 from 101.conf
    assert rows["physpages"][0] == "100" and rows["physpages"][3] == "16384"


def test_vzubc_all_running_and_json(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vzubc.main(["--cgroup-root", str(host), "-j"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(data) == ["101", "102"]
    n = {b["resource"]: b for b in data["102"]}["numproc"]
    assert n["barrier"] == n["limit"] == UNLIMITED       # no config: the kernel's limit


def test_vzubc_errors(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vzubc.main(["--cgroup-root", str(host), "103", "104", "../x"]) == 1
    err = capsys.readouterr().err
    assert "vzubc: error: VE 103 is not running: it has no cgroup" in err
    assert "hint: start it with `vzctl start 103`" in err
    assert "VE 104 does not exist" in err
    assert "'../x' is not a valid CTID" in err
    assert "Traceback" not in err


def test_vzubc_bad_config_is_reported(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = Path(str(host.parent / "vz/etc/vz/conf/101.conf"))
    conf.write_text('NUMPROC="many"\n')
    assert vzubc.main(["--cgroup-root", str(host), "101"]) == 1
    assert f"{conf}:1: NUMPROC: 'many' is not a number" in capsys.readouterr().err


def test_vzubc_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        vzubc.main(["--help"])
    out = capsys.readouterr().out
    assert "failcnt" in out and "vzubc 101" in out and "VZ_ROOT" in out


def test_vzubc_human_relative_quiet_and_names(host: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = ve_conf_path(tmp_path / "vz", "101")
    conf.write_text(conf.read_text() + 'NAME="web"\n')
    store = tmp_path / "store.json"
    args = ["--cgroup-root", str(host), "--store", str(store)]
    assert vzubc.main([*args, "web"]) == 0                    # by name
    out = capsys.readouterr().out
    assert "VE 101 (web)" in out
    numproc = next(x for x in out.splitlines() if x.strip().startswith("numproc"))
    assert numproc.split("|")[1].split() == ["7", "23", "17"]   # 7 of 30 and 40
    assert numproc.split("|")[-1].strip() == "9"
    physpages = next(x for x in out.splitlines() if x.strip().startswith("physpages"))
    assert physpages.split("|")[1].split()[0] == "400.0K"     # 100 pages
    assert vzubc.main([*args, "-r", "-q", "101"]) == 0        # first -r: all 9 are new
    assert "+9" in capsys.readouterr().out
    assert vzubc.main([*args, "-r", "-q", "101"]) == 0        # nothing new since
    assert "numproc" not in capsys.readouterr().out
    (host / VzPaths(tmp_path / "vz").cgroup_prefix / "101" / "pids.events").write_text(
        "max 12\n")
    assert vzubc.main([*args, "-r", "-c", "101"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "numproc" in x)
    assert line.startswith("\x1b[31m") and "+3" in line
    assert vzubc.main([*args, "-w", "0.01", "--iterations", "2", "101"]) == 0
    assert capsys.readouterr().out.count("VE 101 (web)") == 2
