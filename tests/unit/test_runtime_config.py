"""CTID.conf / vz.conf: parsing, round trips that keep comments, errors, files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vzpkg.core.errors import ConfigError
from vzpkg.runtime.config import (
    SAMPLES,
    VeConfig,
    atomic_write,
    install_defaults,
    load_global,
    load_sample,
    sample_names,
    ve_conf_path,
)
from vzpkg.runtime.params import PAGE_SIZE, UNLIMITED

CONF = """\
# Configuration of VE 101 (hand-edited)

ONBOOT="yes"
## resources
PHYSPAGES="0:262144"   # 1 GiB
SWAPPAGES='0:0'
NUMPROC=200:250
KMEMSIZE="14372700:14790164"
export HOSTNAME="web1"
IP_ADDRESS="10.0.0.2 fd00::2"
DESCRIPTION="say \\"hi\\" for \\$5"
"""


def test_parse_reads_values_and_keeps_unknown_keys() -> None:
    cfg = VeConfig.parse(CONF)
    assert cfg.get("ONBOOT") == "yes"
    assert cfg.get("PHYSPAGES") == "0:262144"
    assert cfg.get("SWAPPAGES") == "0:0"
    assert cfg.get("NUMPROC") == "200:250"
    assert cfg.get("KMEMSIZE") == "14372700:14790164"
    assert cfg.get("HOSTNAME") == "web1"
    assert cfg.get("DESCRIPTION") == 'say "hi" for $5'
    assert cfg.get("MISSING") is None
    assert list(cfg.items())[:3] == ["ONBOOT", "PHYSPAGES", "SWAPPAGES"]


def test_unchanged_config_renders_byte_identical() -> None:
    assert VeConfig.parse(CONF).render() == CONF


def test_with_values_changes_only_its_lines() -> None:
    cfg = VeConfig.parse(CONF)
    new = cfg.with_values({"NUMPROC": "400:400", "CPUUNITS": "2000", "KMEMSIZE": None,
                           "ONBOOT": "yes", "DESCRIPTION": 'a "b" `c` \\d'})
    assert cfg.get("NUMPROC") == "200:250"  # the original is untouched (frozen)
    out = new.render().splitlines()
    old = CONF.splitlines()
    assert out[:6] == old[:6]          # comments, blank line, unchanged ONBOOT, PHYSPAGES
    assert out[6] == 'NUMPROC="400:400"'
    assert not any(line.startswith("KMEMSIZE") for line in out)
    assert out[-1] == 'CPUUNITS="2000"'
    again = VeConfig.parse(new.render())
    assert again.get("DESCRIPTION") == 'a "b" `c` \\d'
    assert again.items() == new.items()


def test_last_assignment_wins_and_is_the_one_rewritten() -> None:
    cfg = VeConfig.parse('CPUUNITS="100"\nCPUUNITS="200"\n')
    assert cfg.get("CPUUNITS") == "200"
    assert cfg.with_values({"CPUUNITS": "300"}).render() == 'CPUUNITS="100"\nCPUUNITS="300"\n'


@pytest.mark.parametrize(("line", "needle"), [
    ("JUSTAWORD", 'expected KEY="value"'),
    ('HOSTNAME="web1', "no closing quote"),
    ("HOSTNAME='web1", "no closing quote"),
    ('HOSTNAME="web1" trailing', "unexpected text after the value"),
    ("DESCRIPTION=two words", "unexpected text after the value"),
    ("1KEY=1", 'expected KEY="value"'),
    ('NUMPROC="lots"', "NUMPROC: 'lots' is not a number"),
    ('PHYSPAGES="0:1Q"', "PHYSPAGES: '1Q' is not a size"),
    ('CPUUNITS="2"', "CPUUNITS: 2 is out of range"),
    ('VE_LAYOUT="ploop"', "'ploop' is not one of: plain, overlay"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    f = tmp_path / "101.conf"
    f.write_text(f'# ok\nONBOOT="no"\n{line}\n')
    with pytest.raises(ConfigError) as ei:
        VeConfig.load(f)
    text = str(ei.value)
    assert text.startswith(f"{f}:3: "), text
    assert needle in text
    assert ei.value.hint


def test_typed_getters() -> None:
    cfg = VeConfig.parse('PHYSPAGES="0:1G"\nNUMPROC="unlimited"\nCPULIMIT="50"\nONBOOT="yes"\n'
                         'IP_ADDRESS="10.0.0.2  10.0.0.3"\nCPUMASK="0-1"\n')
    assert cfg.barrier_limit("PHYSPAGES") == (0, 262144)
    assert cfg.barrier_limit_bytes("PHYSPAGES") == (0, 262144 * PAGE_SIZE)
    assert cfg.size_bytes("PHYSPAGES") == 1 << 30
    assert cfg.barrier_limit("NUMPROC") == (UNLIMITED, UNLIMITED)
    assert cfg.size_bytes("SWAPPAGES") is None
    assert cfg.barrier_limit("SWAPPAGES") is None
    assert cfg.get_int("CPULIMIT") == 50
    assert cfg.get_int("CPUUNITS") == 1000  # the table's default
    assert cfg.get_bool("ONBOOT") is True
    assert cfg.get_list("IP_ADDRESS") == ["10.0.0.2", "10.0.0.3"]
    assert cfg.cpumask() == (0, 1)


def test_with_values_checks_known_keys() -> None:
    with pytest.raises(ConfigError, match="NUMPROC: 'x' is not a number"):
        VeConfig().with_values({"NUMPROC": "x"})
    with pytest.raises(ConfigError, match="not a valid configuration key"):
        VeConfig().with_values({"BAD KEY": "1"})


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = ve_conf_path(tmp_path, "101")
    cfg = VeConfig.parse(CONF).with_values({"CPUUNITS": "1500"})
    cfg.save(path)
    assert path == tmp_path / "etc/vz/conf/101.conf"
    assert os.listdir(path.parent) == ["101.conf"]  # no temp file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    loaded = VeConfig.load(path)
    assert loaded.render() == cfg.render()
    loaded.with_values({"CPUUNITS": "9000"}).save()
    assert VeConfig.load(path).get("CPUUNITS") == "9000"
    with pytest.raises(ConfigError, match="no file to save to"):
        VeConfig.parse("A=1").save()


def test_failed_save_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "101.conf"
    path.write_text('CPUUNITS="1000"\n')
    with pytest.raises(UnicodeEncodeError):  # fails half-way through the write
        atomic_write(path, 'CPUUNITS="2000"\n' + "x" * 70000 + "\udcff")
    assert path.read_text() == 'CPUUNITS="1000"\n'
    assert os.listdir(tmp_path) == ["101.conf"]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        VeConfig.load(tmp_path / "nope.conf")


def test_global_and_samples(tmp_path: Path) -> None:
    g = load_global(tmp_path)  # no vz.conf: built-in defaults
    assert g.get("STOP_TIMEOUT") == "60" and g.path is None
    install_defaults(tmp_path)
    assert (tmp_path / "etc/vz/vz.conf").is_file()
    (tmp_path / "etc/vz/vz.conf").write_text('STOP_TIMEOUT="5"\n')
    assert load_global(tmp_path).get("STOP_TIMEOUT") == "5"
    install_defaults(tmp_path)  # never overwrites an operator's file
    assert load_global(tmp_path).get("STOP_TIMEOUT") == "5"
    for name in SAMPLES:
        assert (tmp_path / f"etc/vz/conf/ve-{name}.conf-sample").is_file()
        VeConfig.parse(SAMPLES[name])  # every sample is valid
    basic = load_sample(tmp_path, "basic")
    assert basic.size_bytes("PHYSPAGES") == 512 << 20 and basic.path is None
    (tmp_path / "etc/vz/conf/ve-tiny.conf-sample").write_text('NUMPROC="10"\n')
    assert load_sample(tmp_path, "tiny").barrier_limit("NUMPROC") == (10, 10)
    assert "tiny" in sample_names(tmp_path)
    with pytest.raises(ConfigError, match="no sample configuration 'huge'") as ei:
        load_sample(tmp_path, "huge")
    assert ei.value.hint and "basic" in ei.value.hint and "tiny" in ei.value.hint
    # the name is a file name under etc/vz/conf, never a path out of it
    (tmp_path / "etc/vz/ve-outside.conf-sample").write_text('NUMPROC="10"\n')
    (tmp_path / "etc/vz/conf/ve-x").mkdir()     # conf/ve-x/../../ve-outside... resolves
    for bad in ("x/../../ve-outside", "../ve-outside", "basic\n", "", ".hidden"):
        with pytest.raises(ConfigError, match="bad sample configuration name"):
            load_sample(tmp_path, bad)


def test_layered_and_expanded() -> None:
    base = VeConfig.parse('VE_ROOT="/vz/root/$VEID"\nCPUUNITS="1000"\nSTOP_TIMEOUT="60"\n')
    ve = VeConfig.parse('CPUUNITS="3000"\n', Path("/x/101.conf"))
    eff = ve.layered_on(base)
    assert eff.get("CPUUNITS") == "3000" and eff.get("STOP_TIMEOUT") == "60"
    assert eff.path is None
    assert eff.expanded("VE_ROOT", VEID="101") == "/vz/root/101"
    assert base.expanded("VE_ROOT") == "/vz/root/$VEID"
