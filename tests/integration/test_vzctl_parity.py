"""vzctl as OpenVZ's vzctl behaves (issue 13, section 4): exit codes of vzerror.h,
the status line, destroy of a running VE, addresses and names given twice, the
VE's lock, live set, DNS inherited from the host, vz.conf's paths, a VE of a layout
this vzctl does not run, and --ioprio without BFQ.  Real VEs (CTIDs 9700-9799)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh, vzctl_cli
from vzpkg.runtime import state
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("parity"))
    yield r
    destroy_all(r)


def fails(r: object, code: int, *words: str) -> None:
    """The vzctl run *r* failed with *code*, a message for people and no traceback."""
    import subprocess
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.startswith("vzctl: error: ") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# -- 1. exit codes --------------------------------------------------------------------

def test_exit_codes_of_the_lifecycle(rt: Runtime) -> None:
    ctid = 9701
    fails(vzctl_cli(rt, "start", str(ctid)), 14, f"VE {ctid} does not exist")
    fails(vzctl_cli(rt, "create", str(ctid), "--ostemplate", "nosuch-1"), 91,
          "no cache named 'nosuch-1")
    assert not rt.paths.conf(ctid).exists()
    r = vzctl_cli(rt, "create", str(ctid), "--ostemplate", "busybox-1")
    assert r.returncode == 0, r.stderr
    try:
        fails(vzctl_cli(rt, "create", str(ctid), "--ostemplate", "busybox-1"), 44,
              f"VE {ctid} already exists")
        fails(vzctl_cli(rt, "exec", str(ctid), "true"), 31, f"VE {ctid} is not running")
        fails(vzctl_cli(rt, "stop", str(ctid)), 31, f"VE {ctid} is not running")
        assert vzctl_cli(rt, "start", str(ctid)).returncode == 0
        fails(vzctl_cli(rt, "start", str(ctid)), 32, f"VE {ctid} is already running")
        fails(vzctl_cli(rt, "umount", str(ctid)), 32, f"VE {ctid} is running")
        # exec2 is exec (OpenVZ: exec, returning the command's status): the line goes
        # through the VE's /bin/sh -c, and the status is the shell's (127: not found,
        # 126: not executable); 8 when the VE's shell itself cannot be run
        for cmd in ("exec", "exec2"):
            assert vzctl_cli(rt, cmd, str(ctid), "exit 7").returncode == 7
            assert vzctl_cli(rt, cmd, str(ctid), "false").returncode == 1
            r = vzctl_cli(rt, cmd, str(ctid), "echo", "$((6*7))", "|", "tr", "4", "x")
            assert (r.returncode, r.stdout) == (0, "x2\n"), r.stderr
            r = vzctl_cli(rt, cmd, str(ctid), "no-such-command")
            assert r.returncode == 127 and "no-such-command: not found" in r.stderr, r.stderr
            r = vzctl_cli(rt, cmd, str(ctid), "/etc/hostname")
            assert r.returncode == 126 and "Permission denied" in r.stderr, r.stderr
        assert vzctl_cli(rt, "exec", str(ctid), "mv /bin/sh /bin/sh.off").returncode == 0
        for cmd in ("exec", "exec2"):
            fails(vzctl_cli(rt, cmd, str(ctid), "true"), 8,
                  f"VE {ctid}: cannot run the command: the VE's /bin/sh could not be run "
                  "(no such command in the VE)", "the VE needs a shell there")
        rt.exec(ctid, ["/bin/busybox", "mv", "/bin/sh.off", "/bin/sh"])
        fails(vzctl_cli(rt, "set", str(ctid), "--userpasswd", "nobody-here:pw"), 74,
              "chpasswd in VE")
    finally:
        rt.destroy(ctid)
    # a private area left without a CTID.conf is not overwritten: 44 as well
    rt.paths.private(ctid).mkdir(parents=True)
    try:
        fails(vzctl_cli(rt, "create", str(ctid), "--ostemplate", "busybox-1"), 44,
              "private area")
        assert not rt.paths.conf(ctid).exists()
    finally:
        rt.paths.private(ctid).rmdir()


def test_an_address_in_use_is_exit_78(rt: Runtime) -> None:
    rt.create(9702, "busybox-1", ipadd=["198.18.97.2"])
    rt.create(9703, "busybox-1")
    try:
        fails(vzctl_cli(rt, "create", "9704", "--ostemplate", "busybox-1",
                        "--ipadd", "198.18.97.2"), 78, "198.18.97.2 is already VE 9702's")
        assert not rt.paths.conf(9704).exists()
        fails(vzctl_cli(rt, "set", "9703", "--ipadd", "198.18.97.2", "--save"), 78,
              "198.18.97.2 is already VE 9702's")
        assert "198.18.97.2" not in rt.paths.conf(9703).read_text()
    finally:
        rt.destroy(9702)
        rt.destroy(9703)


def test_start_fails_alike_with_and_without_the_event_helper(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails in the event helper exits as a direct start does: the same
    vzctl exit code and message (here 78: an address routed to a running VE, written
    into the second VE's CTID.conf by hand), and no half-started VE either way."""
    rt.create(9745, "busybox-1", ipadd=["198.18.97.45"])
    rt.create(9746, "busybox-1")
    conf = rt.paths.conf(9746)
    conf.write_text(conf.read_text() + 'IP_ADDRESS="198.18.97.45"\n')
    try:
        rt.start(9745)
        seen = []
        for helper in ("no", "yes"):
            monkeypatch.setenv("VZCTL_EVENTD", helper)
            r = vzctl_cli(rt, "start", "9746")
            fails(r, 78, "198.18.97.45 is already routed to")
            assert not rt.state(9746).running and not rt.state(9746).mounted
            seen.append(r.stderr)
        assert seen[0] == seen[1]
        # and a VE that is not there: 14 from either path
        for helper in ("no", "yes"):
            monkeypatch.setenv("VZCTL_EVENTD", helper)
            fails(vzctl_cli(rt, "start", "9747"), 14, "VE 9747 does not exist")
    finally:
        rt.destroy(9745)
        rt.destroy(9746)


# -- 2. the status line -----------------------------------------------------------------

def test_status_line_is_openvzs(rt: Runtime) -> None:
    ctid = 9705

    def status() -> str:
        r = vzctl_cli(rt, "status", str(ctid))
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert status() == f"CTID {ctid} deleted unmounted down\n"
    rt.create(ctid, "busybox-1")
    try:
        assert status() == f"CTID {ctid} exist unmounted down\n"
        rt.mount(ctid)
        assert status() == f"CTID {ctid} exist mounted down\n"
        rt.umount(ctid)
        rt.start(ctid)
        assert status() == f"CTID {ctid} exist mounted running\n"
    finally:
        rt.destroy(ctid)
    assert status() == f"CTID {ctid} deleted unmounted down\n"


# -- 3. destroy of a running VE -----------------------------------------------------------

def test_destroy_refuses_a_running_ve_unless_forced(rt: Runtime) -> None:
    ctid = 9706
    rt.create(ctid, "busybox-1")
    try:
        pid = rt.start(ctid)
        fails(vzctl_cli(rt, "destroy", str(ctid)), 32, f"VE {ctid} is running",
              f"vzctl destroy {ctid} --force")
        assert rt.state(ctid).pid == pid and rt.paths.private(ctid).is_dir()
        r = vzctl_cli(rt, "destroy", str(ctid), "--force")
        assert r.returncode == 0, r.stderr
        assert not rt.state(ctid).exists and not rt.paths.private(ctid).exists()
        info = state.proc_start_time(pid)     # gone, or a zombie of this test
        assert info is None or info[0] == "Z", info
        rt.create(ctid, "busybox-1")                 # a stopped VE needs no --force
        assert vzctl_cli(rt, "destroy", str(ctid)).returncode == 0
        assert not rt.state(ctid).exists
    finally:
        if rt.state(ctid).exists:
            rt.destroy(ctid)


# -- 4. an address or a name given twice --------------------------------------------------

def test_an_address_or_a_name_is_never_given_twice(rt: Runtime) -> None:
    rt.create(9707, "busybox-1", ipadd=["198.18.97.7"])
    rt.create(9708, "busybox-1")
    conf = rt.paths.conf(9707)
    good = conf.read_text()
    try:
        conf.write_text(good + 'CPUUNITS="lots"\n')     # 9707 does not load: still its address
        fails(vzctl_cli(rt, "create", "9709", "--ostemplate", "busybox-1",
                        "--ipadd", "198.18.97.7"), 78, "198.18.97.7 is already VE 9707's")
        conf.write_text(good)
        rt.start(9708)
        fails(vzctl_cli(rt, "set", "9708", "--ipadd", "198.18.97.7"), 78,
              "198.18.97.7 is already VE 9707's")
        assert "198.18.97.7" not in sh(rt, 9708, "ip -o addr")[1]
        assert vzctl_cli(rt, "set", "9707", "--name", "web", "--save").returncode == 0
        fails(vzctl_cli(rt, "set", "9708", "--name", "web", "--save"), 131,
              "the name 'web' is already VE 9707's", "vzctl set 9707 --name NEW --save")
        assert "NAME" not in rt.paths.conf(9708).read_text()
        r = vzctl_cli(rt, "set", "9707", "--name", "web", "--save")   # its own name again
        assert r.returncode == 0, r.stderr
        assert vzctl_cli(rt, "status", "web").stdout == "CTID 9707 exist unmounted down\n"
    finally:
        conf.write_text(good)
        rt.destroy(9707)
        rt.destroy(9708)
        assert not rt.paths.conf(9709).exists()


# -- 5. the VE's lock ---------------------------------------------------------------------

def test_a_held_lock_is_exit_9_unless_waited_for(rt: Runtime) -> None:
    import subprocess
    import sys
    import time
    ctid = 9710
    rt.create(ctid, "busybox-1")
    try:
        with rt.locked(ctid):                     # this process is "another vzctl"
            who = f"VE {ctid} is locked by another vzctl (pid {os.getpid()}: "
            for args in (("set", str(ctid), "--cpuunits", "500", "--save"),
                         ("start", str(ctid)), ("destroy", str(ctid)), ("mount", str(ctid))):
                t0 = time.monotonic()
                fails(vzctl_cli(rt, *args), 9, who, "--wait-lock")
                assert time.monotonic() - t0 < 10         # at once, not after a wait
            assert rt.config(ctid).get("CPUUNITS") != "500" and not rt.state(ctid).running
            assert vzctl_cli(rt, "status", str(ctid)).returncode == 0   # status takes no lock
            env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
                   "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
            waiting = subprocess.Popen(
                [str(Path(sys.executable).parent / "vzctl"), "--wait-lock", "set", str(ctid),
                 "--cpuunits", "500", "--save"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            time.sleep(1.5)
            assert waiting.poll() is None            # still waiting for the lock
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert rt.config(ctid).get("CPUUNITS") == "500"
        r = vzctl_cli(rt, "set", str(ctid), "--cpuunits", "600", "--save", "--wait-lock")
        assert r.returncode == 0, r.stderr           # (after the command, too)
    finally:
        rt.destroy(ctid)


# -- 6., 7. a live set changes only what it names; --ipdel of live addresses -------------

def _cgroup_file(rt: Runtime, ctid: int, v1: tuple[str, str], v2: str) -> Path:
    from vzpkg.runtime.cgroups.v1 import CgroupsV1
    from vzpkg.runtime.cgroups.v2 import CgroupsV2
    cg = rt.cgroups
    if isinstance(cg, CgroupsV2):
        return cg.group(str(ctid)) / v2
    assert isinstance(cg, CgroupsV1)
    g = cg.group(v1[0], str(ctid))
    assert g is not None
    return g / v1[1]


def test_a_live_set_keeps_earlier_live_changes(rt: Runtime) -> None:
    ctid = 9711
    rt.create(ctid, "busybox-1", hostname="before")
    try:
        rt.start(ctid)
        weight = _cgroup_file(rt, ctid, ("cpu", "cpu.shares"), "cpu.weight")
        ram = _cgroup_file(rt, ctid, ("memory", "memory.limit_in_bytes"), "memory.max")
        saved = rt.paths.conf(ctid).read_text()
        r = vzctl_cli(rt, "set", str(ctid), "--cpuunits", "500")        # live, not saved
        assert r.returncode == 0, r.stderr
        live_weight = weight.read_text().strip()
        assert live_weight in ("512", "50"), live_weight               # v1 shares, v2 weight
        assert vzctl_cli(rt, "set", str(ctid), "--hostname", "during").returncode == 0
        r = vzctl_cli(rt, "set", str(ctid), "--ram", "256M")
        assert r.returncode == 0, r.stderr
        assert weight.read_text().strip() == live_weight               # still 500 units
        assert int(ram.read_text()) == 256 << 20
        assert sh(rt, ctid, "hostname")[1].strip() == "during"
        r = vzctl_cli(rt, "set", str(ctid), "--nameserver", "192.0.2.53")
        assert r.returncode == 0, r.stderr
        assert sh(rt, ctid, "hostname")[1].strip() == "during"         # not the saved one
        assert int(ram.read_text()) == 256 << 20
        assert rt.paths.conf(ctid).read_text() == saved               # nothing was stored
        # --save stores what it names, and only that
        r = vzctl_cli(rt, "set", str(ctid), "--numproc", "300", "--save")
        assert r.returncode == 0, r.stderr
        cfg = rt.config(ctid)
        assert cfg.get("NUMPROC") == "300:300" and cfg.get("CPUUNITS") != "500"
        assert cfg.get("HOSTNAME") == "before" and cfg.get("PHYSPAGES") != "0:65536"
        assert weight.read_text().strip() == live_weight
        # a parameter that cannot change a running VE is not stored without --save
        r = vzctl_cli(rt, "set", str(ctid), "--onboot", "yes")
        assert r.returncode == 0 and "add --save" in r.stdout, r.stdout
        assert rt.config(ctid).get("ONBOOT") is None
        # a restart starts from CTID.conf: the live changes are gone
        rt.stop(ctid)
        assert not rt.paths.livefile(ctid).exists()
        rt.start(ctid)
        assert weight.read_text().strip() != live_weight
        assert sh(rt, ctid, "hostname")[1].strip() == "before"
    finally:
        rt.destroy(ctid)


def test_ipdel_takes_addresses_given_live(rt: Runtime) -> None:
    ctid, other = 9712, 9713
    rt.create(ctid, "busybox-1", ipadd=["198.18.97.12"])
    rt.create(other, "busybox-1")
    try:
        rt.start(ctid)

        def addrs() -> set[str]:
            code, out = sh(rt, ctid, "ip -o addr show dev eth0")
            assert code == 0, out
            return {w.split("/")[0] for ln in out.splitlines()
                    for w in ln.split()[3:4] if "." in w}

        assert addrs() == {"198.18.97.12"}
        r = vzctl_cli(rt, "set", str(ctid), "--ipadd", "198.18.97.13", "--ipadd", "198.18.97.14")
        assert r.returncode == 0, r.stderr
        assert addrs() == {"198.18.97.12", "198.18.97.13", "198.18.97.14"}
        # a live address is the VE's: no other VE may take it, even in its CTID.conf
        fails(vzctl_cli(rt, "set", str(other), "--ipadd", "198.18.97.13", "--save"), 78,
              f"198.18.97.13 is already VE {ctid}'s")
        r = vzctl_cli(rt, "set", str(ctid), "--ipdel", "198.18.97.13")
        assert r.returncode == 0, r.stderr
        assert addrs() == {"198.18.97.12", "198.18.97.14"}
        assert rt.config(ctid).get("IP_ADDRESS") == "198.18.97.12"    # CTID.conf unchanged
        # --save edits CTID.conf's list; the live list keeps its live address
        r = vzctl_cli(rt, "set", str(ctid), "--ipadd", "198.18.97.15", "--save")
        assert r.returncode == 0, r.stderr
        assert addrs() == {"198.18.97.12", "198.18.97.14", "198.18.97.15"}
        assert rt.config(ctid).get("IP_ADDRESS") == "198.18.97.12 198.18.97.15"
        r = vzctl_cli(rt, "set", str(ctid), "--ipdel", "all")
        assert r.returncode == 0, r.stderr
        assert addrs() == set()
        assert rt.config(ctid).get("IP_ADDRESS") == "198.18.97.12 198.18.97.15"
        assert vzctl_cli(rt, "set", str(other), "--ipadd", "198.18.97.14",
                         "--save").returncode == 0                   # free again
    finally:
        rt.destroy(ctid)
        rt.destroy(other)


# -- 8. DNS from the host -------------------------------------------------------------------

def _host_resolv() -> tuple[list[str], list[str]]:
    """The host's non-loopback name servers and search domains (read here on its own,
    not through vzctl's reader)."""
    servers: list[str] = []
    search: list[str] = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["nameserver"] and not words[1].startswith(("127.", "::1")):
            servers.append(words[1])
        elif words[:1] in (["search"], ["domain"]):
            search = words[1:]
    return servers, search


def test_nameserver_and_searchdomain_inherit_the_hosts(rt: Runtime) -> None:
    servers, search = _host_resolv()
    if not servers:
        pytest.skip("the host's /etc/resolv.conf names no server a VE can reach")
    ctid = 9714
    rt.create(ctid, "busybox-1")
    try:
        r = vzctl_cli(rt, "set", str(ctid), "--nameserver", "inherit", "--searchdomain",
                      "inherit", "--save")
        assert r.returncode == 0, r.stderr
        cfg = rt.config(ctid)
        assert (cfg.get("NAMESERVER"), cfg.get("SEARCHDOMAIN")) == ("inherit", "inherit")
        rt.start(ctid)                               # at start ...

        def resolv() -> tuple[list[str], list[str]]:
            code, out = sh(rt, ctid, "cat /etc/resolv.conf")
            assert code == 0, out
            got: tuple[list[str], list[str]] = ([], [])
            for ln in out.splitlines():
                if ln.startswith("nameserver "):
                    got[0].append(ln.split()[1])
                elif ln.startswith("search "):
                    got[1].extend(ln.split()[1:])
            return got

        assert resolv() == (servers, search)
        r = vzctl_cli(rt, "set", str(ctid), "--nameserver", "192.0.2.53")
        assert r.returncode == 0, r.stderr
        assert resolv()[0] == ["192.0.2.53"]
        r = vzctl_cli(rt, "set", str(ctid), "--nameserver", "inherit")   # ... and live
        assert r.returncode == 0, r.stderr
        assert resolv() == (servers, search)
    finally:
        rt.destroy(ctid)


# -- 9. vz.conf's VE_ROOT, VE_PRIVATE, TEMPLATE, DEF_OSTEMPLATE -------------------------------

def test_vz_conf_places_the_ves_and_finds_the_caches(tmp_path: Path) -> None:
    from tests.runtime_helpers import make_busybox_cache
    from vzpkg.runtime.config import default_global_conf
    from vzpkg.runtime.paths import VzPaths
    root, ves, tpl = tmp_path / "vz", tmp_path / "ves", tmp_path / "tpl"
    (root / "etc/vz").mkdir(parents=True)
    (root / "etc/vz/vz.conf").write_text(
        default_global_conf().replace('DEF_OSTEMPLATE="debian-12"', 'DEF_OSTEMPLATE="busybox-1"')
        + f'VE_ROOT="{ves}/root/$VEID"\nVE_PRIVATE="{ves}/private/$VEID"\nTEMPLATE="{tpl}"\n')
    make_busybox_cache(tpl / "cache")           # the only place that has the cache
    (tmp_path / "empty").mkdir()
    rt = Runtime(VzPaths(root), [tmp_path / "empty"])
    try:
        r = vzctl_cli(rt, "create", "9720")     # --ostemplate: DEF_OSTEMPLATE
        assert r.returncode == 0, r.stderr
        cfg = rt.config(9720)
        assert cfg.get("OSTEMPLATE") == "busybox-1-x86_64-minimal"
        assert cfg.get("VE_PRIVATE") == f"{ves}/private/9720"
        assert cfg.get("VE_ROOT") == f"{ves}/root/9720"
        assert (ves / "private/9720/etc/os-release").is_file()
        assert not (root / "private/9720").exists()
        assert (ves / "private").stat().st_mode & 0o777 == 0o700
        for ctid in (9721, 9722):
            r = vzctl_cli(rt, "create", str(ctid), "--layout", "overlay")
            assert r.returncode == 0, r.stderr
        assert vzctl_cli(rt, "start", "9720").returncode == 0
        assert vzctl_cli(rt, "status", "9720").stdout == "CTID 9720 exist mounted running\n"
        assert (ves / "root/9720/etc/os-release").is_file()
        r = vzctl_cli(rt, "exec", "9720", "cat /etc/os-release")
        assert r.returncode == 0 and "Busybox test" in r.stdout, r.stderr
        assert vzctl_cli(rt, "destroy", "9720", "--force").returncode == 0
        assert not (ves / "private/9720").exists()
        # the shared copy under an overlay VE outlives the destroy of another one
        assert vzctl_cli(rt, "destroy", "9721").returncode == 0
        assert vzctl_cli(rt, "start", "9722").returncode == 0
        r = vzctl_cli(rt, "exec2", "9722", "cat", "/etc/os-release")
        assert r.returncode == 0 and "Busybox test" in r.stdout, r.stderr
        assert vzctl_cli(rt, "destroy", "9722", "--force").returncode == 0
        assert not any((root / "shared").iterdir())
    finally:
        destroy_all(rt)


# -- 10. a VE of a layout this vzctl does not run -------------------------------------------

def test_a_simfs_or_ploop_ve_fails_alone(rt: Runtime) -> None:
    from vzpkg.core.errors import ConfigError, VeConfigError
    good = 9732
    rt.create(good, "busybox-1")
    for ctid, lay in ((9730, "ploop"), (9731, "simfs")):     # as OpenVZ wrote them
        rt.paths.conf(ctid).write_text(f'VE_LAYOUT="{lay}"\nVE_PRIVATE="/vz/private/$VEID"\n'
                                       f'OSTEMPLATE="centos-7-x86_64"\nNAME="old{ctid}"\n'
                                       f'IP_ADDRESS="198.18.97.{ctid - 9700}"\n')
    try:
        rt.start(good)
        for ctid, lay in ((9730, "ploop"), (9731, "simfs")):
            with pytest.raises(VeConfigError) as ei:
                rt.config(ctid)
            assert ei.value.ctid == ctid and isinstance(ei.value, ConfigError)
            for args in (("start", str(ctid)), ("destroy", str(ctid)),
                         ("set", str(ctid), "--cpuunits", "500", "--save")):
                fails(vzctl_cli(rt, *args), 85, f"VE {ctid} has VE_LAYOUT='{lay}'",
                      "only plain and overlay", "other VEs are not affected")
            assert vzctl_cli(rt, "status", str(ctid)).stdout == \
                f"CTID {ctid} exist unmounted down\n"
            assert rt.paths.conf(ctid).exists()
        # the other VEs go on as before; the broken ones still hold their names and addresses
        assert vzctl_cli(rt, "exec", str(good), "true").returncode == 0
        r = vzctl_cli(rt, "set", str(good), "--cpuunits", "700", "--save")
        assert r.returncode == 0, r.stderr
        fails(vzctl_cli(rt, "set", str(good), "--ipadd", "198.18.97.30"), 78, "VE 9730's")
        fails(vzctl_cli(rt, "set", str(good), "--name", "old9731", "--save"), 131)
        r = vzctl_cli(rt, "boot", "--dry-run")
        assert r.returncode == 0, r.stderr
    finally:
        for ctid in (9730, 9731):
            rt.paths.conf(ctid).unlink()
        rt.destroy(good)


def _vzlist(rt: Runtime, *args: str) -> tuple[int, str, str]:
    import subprocess
    import sys
    r = subprocess.run([str(Path(sys.executable).parent / "vzlist"), *args],
                       env={**os.environ, "VZ_ROOT": str(rt.paths.root)},
                       capture_output=True, text=True, check=False, timeout=60)
    return r.returncode, r.stdout, r.stderr


def test_vzlist_shows_live_values_and_lists_past_a_broken_ve(rt: Runtime) -> None:
    """vzlist shows what a running VE has now (a set without --save included), and
    vzlist -a lists the other VEs past one whose CTID.conf vzctl cannot use (exit 0,
    the broken one named on stderr and listed with what its file says)."""
    import json
    ctid, broken = 9748, 9749
    rt.create(ctid, "busybox-1", hostname="before")
    rt.paths.conf(broken).write_text('VE_LAYOUT="ploop"\nHOSTNAME="old"\n'
                                     'IP_ADDRESS="198.18.97.49"\n')
    try:
        rt.start(ctid)
        r = vzctl_cli(rt, "set", str(ctid), "--hostname", "during", "--cpuunits", "500",
                      "--ipadd", "198.18.97.48", "--numproc", "321")       # live only
        assert r.returncode == 0, r.stderr
        code, out, err = _vzlist(rt, "-H", "-o", "ctid,hostname,cpuunits,ip,numproc.b",
                                 str(ctid))
        assert (code, out.split()) == (0, [str(ctid), "during", "500", "198.18.97.48",
                                           "321"]), err
        code, out, err = _vzlist(rt, "-a", "-H", "-o", "ctid,status,hostname,layout")
        assert code == 0 and [ln.split() for ln in out.splitlines()] == [
            [str(ctid), "running", "during", "plain"],
            [str(broken), "stopped", "old", "ploop"]], (out, err)
        assert err.startswith(f"vzlist: warning: VE {broken} has VE_LAYOUT='ploop'"), err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        code, out, _ = _vzlist(rt, "-a", "-j")
        rows = {d["ctid"]: d for d in json.loads(out)}
        assert rows[ctid]["conf_error"] is None and rows[ctid]["hostname"] == "during"
        assert "only plain and overlay" in rows[broken]["conf_error"]
        rt.stop(ctid)          # a stopped VE: what CTID.conf says again
        code, out, err = _vzlist(rt, "-a", "-H", "-o", "ctid,hostname,cpuunits,ip",
                                 str(ctid))
        assert out.split() == [str(ctid), "before", "1000", "-"], (out, err)
    finally:
        rt.paths.conf(broken).unlink()
        rt.destroy(ctid)


# -- 11. --ioprio without BFQ -------------------------------------------------------------------

def _io_weight_files(rt: Runtime) -> list[str]:
    """The weight files this host's disks honour (read here on its own): BFQ's where
    a disk uses BFQ, io.weight where cgroup v2's io.cost is enabled."""
    files = []
    bfq = any("[bfq]" in f.read_text() for f in Path("/sys/block").glob("*/queue/scheduler"))
    if rt.cgroups.version == 1:
        return ["blkio.bfq.weight"] if bfq else []
    if bfq:
        files.append("io.bfq.weight")
    root = rt.cgroups.cgroup2_root()
    qos = root / "io.cost.qos" if root else None
    if qos is not None and qos.exists() and "enable=1" in qos.read_text():
        files.append("io.weight")
    return files


def test_ioprio_without_an_io_scheduler_for_it_is_a_warning(rt: Runtime) -> None:
    ctid = 9741
    files = _io_weight_files(rt)
    works = bool(files)
    rt.create(ctid, "busybox-1")
    try:
        r = vzctl_cli(rt, "set", str(ctid), "--ioprio", "6", "--save")
        assert r.returncode == 0, r.stderr
        assert ("warning: IOPRIO 6 has no effect on this host" in r.stdout) != works, r.stdout
        assert rt.config(ctid).get("IOPRIO") == "6"
        r = vzctl_cli(rt, "start", str(ctid))             # a VE with IOPRIO starts
        assert r.returncode == 0, r.stderr
        r = vzctl_cli(rt, "set", str(ctid), "--ioprio", "2")
        assert r.returncode == 0, r.stderr
        assert "applied to running VE" in r.stdout
        assert ("warning: IOPRIO 2 has no effect" in r.stdout) != works, r.stdout
        for name in files:      # (none on a host whose disks use neither BFQ nor io.cost)
            f = _cgroup_file(rt, ctid, ("blkio", name), name)
            assert "50" in f.read_text().split(), (name, f.read_text())
        r = vzctl_cli(rt, "set", str(ctid), "--ioprio", "4")   # the default: nothing to say
        assert r.returncode == 0 and "warning" not in r.stdout, r.stdout
    finally:
        rt.destroy(ctid)
