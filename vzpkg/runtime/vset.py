"""``vzctl set``: change a VE's settings, live when it runs, saved with --save."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vzpkg.core.errors import NameInUseError, PasswordError, UsageError, VeError
from vzpkg.runtime import diskimage, diskresize, dists, iolimit, join, layout, net, ns, quota, state
from vzpkg.runtime.cgroups.mapping import DEFAULT_IOPRIO
from vzpkg.runtime.config import VeConfig, atomic_write, lenient_values
from vzpkg.runtime.derived import addrs_of, dist_setup, ids_of, layout_of, mount_ids_of
from vzpkg.runtime.params import RESOURCE_KEYS, UNLIMITED, find_param, parse_barrier_limit
from vzpkg.runtime.ubctable import BY_KEY, Mode, Unit

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

LIVE_DIST_KEYS = ("HOSTNAME", "IP_ADDRESS", "NAMESERVER", "SEARCHDOMAIN")


def capture(rt: Runtime, ctid: int, spec_argv: Sequence[str], stdin: bytes) -> tuple[int, str]:
    """Run a command in a running VE with *stdin*; (status, combined output)."""
    pid = rt.init_pid(ctid)
    r_in = stdin_fd(stdin)
    out = os.memfd_create("vzctl-out")
    try:
        cg = rt.cgroups
        code = join.join(join.JoinSpec(pid=pid, argv=list(spec_argv), stdio=(r_in, out, out),
                                       attach=lambda p: cg.attach(str(ctid), p),
                                       userns=rt.userns(ctid)))
        text = read_all(out)
    finally:
        os.close(r_in)
        os.close(out)
    return code, text


def stdin_fd(data: bytes) -> int:
    """A descriptor to read *data* from (a memfd: no size limit, no writer to wait for)."""
    fd = os.memfd_create("vzctl-in")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_all(fd: int) -> str:
    """Everything written to the memfd *fd*."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def run_stopped(rt: Runtime, ctid: int, argv: Sequence[str], stdin: bytes,
                ready: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Run *argv* on a stopped VE's files, as the VE would: pid 1 of its own
    namespaces (no network but loopback), in the VE's cgroup with its limits,
    confined (ns.run_command); (status, combined output).  Nothing it starts
    outlives it.  *ready(pid)*, if given, runs on the host before the command
    starts, with its host pid (to reach into its namespaces)."""
    cfg = rt.config(ctid)
    was = layout.is_mounted(rt.paths.ve_root(ctid))
    ids = ids_of(cfg)
    root = layout.mount(rt.paths, ctid, layout_of(cfg), mount_ids_of(cfg))
    cg = rt.cgroups
    r_in, w_in = stdin_fd(stdin), -1
    out = os.memfd_create("vzctl-out")
    try:
        cg.create(str(ctid))
        cg.apply(str(ctid), cfg.layered_on(rt.global_conf()))
        if ids is not None:
            cg.delegate(str(ctid), ids.base)
        spec = ns.StartSpec(ctid=ctid, root=root, hostname=cfg.get("HOSTNAME") or None,
                            argv=list(argv), stdio=(r_in, out, out),
                            enter_cgroup=lambda: cg.attach(str(ctid), 0), ids=ids,
                            stage=rt.stage(ctid) if ids else None)
        code = ns.run_command(spec, ready or (lambda pid: None))
        text = read_all(out)
    finally:
        for fd in (r_in, w_in, out):
            if fd >= 0:
                os.close(fd)
        if cg.procs(str(ctid)):
            cg.kill_all(str(ctid))
        cg.remove(str(ctid))
        if not was:
            layout.umount(rt.paths, ctid)
    return code, text


def set_passwords(rt: Runtime, ctid: int, pairs: Sequence[str]) -> None:
    for p in pairs:
        user, sep, _ = p.partition(":")
        if not sep or not user:
            raise UsageError(f"--userpasswd {p.split(':')[0]!r}...: expected USER:PASSWORD")
    data = ("\n".join(pairs) + "\n").encode()
    if state.running_pid(rt.paths.pidfile(ctid)) is not None:
        code, text = capture(rt, ctid, ["chpasswd"], data)
    else:
        code, text = run_stopped(rt, ctid, ["/bin/sh", "-c", "exec chpasswd"], data)
    if code != 0:
        raise PasswordError(f"chpasswd in VE {ctid} failed ({code}): {text.strip()}",
                            hint="the VE needs chpasswd (from passwd or busybox) and the "
                                 "user must exist in it")


def live_config(rt: Runtime, ctid: int, saved: VeConfig | None = None) -> VeConfig:
    """What VE *ctid* has now: its CTID.conf (*saved*, read when not given) and, while
    it runs, what a ``set`` without --save changed since it started (kept in
    ``VZ_ROOT/run/CTID.live``, which goes when the VE stops)."""
    cfg = saved if saved is not None else rt.config(ctid)
    live = rt.paths.livefile(ctid)
    if state.running_pid(rt.paths.pidfile(ctid)) is None or not live.exists():
        return cfg
    return cfg.with_values(VeConfig.load(live).items())


def apply(rt: Runtime, ctid: int, values: dict[str, str], *,
          userpasswd: Sequence[str] = (), save: bool = False,
          saved_values: dict[str, str] | None = None) -> list[str]:
    """Change what *values* names, and only that: live on a running VE (on top of what
    earlier live changes made), in CTID.conf with *save*.  *saved_values*, when given,
    is what --save writes where it differs from the live change (a list edited from
    the saved list rather than the live one: --ipadd, --ipdel)."""
    notes: list[str] = []
    # addresses and names are the root's: checked and taken under its lock, as create does
    root_wide = "IP_ADDRESS" in values or "NAME" in values
    with rt.locked(ctid), (state.flocked(rt.paths.root / "lock" / "ids.lck") if root_wide
                           else contextlib.nullcontext()):
        saved = rt.config(ctid)
        notes += ubc_notes(rt.cgroups.version, values)     # (refuses before any change)
        pid = state.running_pid(rt.paths.pidfile(ctid))
        cfg = live_config(rt, ctid, saved) if pid is not None else saved
        to_save = dict(values if saved_values is None else saved_values)
        new_vals = dict(values)
        later = [k for k in new_vals if not _live(k)]
        if pid is not None:             # a running VE changes what can change live
            new_vals = {k: v for k, v in new_vals.items() if _live(k)}
        cur = addrs_of(cfg)
        removed: list[net.Addr] = []
        added: list[net.Addr] = []      # live
        stored: list[net.Addr] = []     # new in CTID.conf
        if "IP_ADDRESS" in new_vals:
            want = [net.parse_ip(a) for a in new_vals["IP_ADDRESS"].split()]
            removed = [a for a in cur if all(a.ip != w.ip for w in want)]
            added = [w for w in want if all(a.ip != w.ip for a in cur)]
        if save and "IP_ADDRESS" in to_save:
            before = addrs_of(saved)
            stored = [w for w in (net.parse_ip(a) for a in to_save["IP_ADDRESS"].split())
                      if all(a.ip != w.ip for a in before)]
        net.check_free(rt.paths, ctid, [*added, *stored])
        if values.get("NAME"):
            _check_name_free(rt, ctid, values["NAME"])
        if pid is None and not save and values:
            raise UsageError(f"VE {ctid} is not running, so nothing would change",
                             hint="add --save to store the settings for its next start")
        new_cfg = cfg.with_values(new_vals)             # (checks every value first)
        final = saved.with_values(to_save) if save else saved
        if any(k in quota.KEYS for k in values):        # the disk first: it may refuse
            notes += _disk(rt, ctid, values, cfg, new_cfg if pid is not None else final,
                           running=pid is not None)
        if pid is not None and new_vals:
            if any(k in RESOURCE_KEYS for k in new_vals):
                rt.cgroups.apply(str(ctid), new_cfg.layered_on(rt.global_conf()))
            if any(k in iolimit.KEYS for k in new_vals) and (
                    warning := iolimit.apply(rt.cgroups, str(ctid), new_cfg,
                                             rt.paths.private(ctid))):
                notes.append(warning)
            hif = rt.paths.host_ifname(ctid)
            net.delete(hif, pid, removed)
            net.add(hif, pid, added, [a for a in cur if a not in removed])
            if any(k in new_vals for k in LIVE_DIST_KEYS):
                _live_dist(rt, ctid, pid, dist_setup(new_cfg),
                           new_vals.get("HOSTNAME"))
            _keep_live(rt, ctid, new_cfg, final)
            notes.append(f"applied to running VE {ctid}")
        if warning := _ioprio_unused(rt, values):
            notes.append(warning)
        if pid is None and any(k in iolimit.KEYS for k in values) and (
                why := iolimit.unusable(rt.cgroups, rt.paths.private(ctid))):
            notes.append(iolimit.warning(why))
        if pid is not None and later and not save:
            notes.append(f"warning: {', '.join(later)} cannot change a running VE and was "
                         "not stored: add --save to store it")
        if userpasswd:
            set_passwords(rt, ctid, userpasswd)
            notes.append(f"password set for {', '.join(p.split(':')[0] for p in userpasswd)}")
        if save and to_save:
            final.save(rt.paths.conf(ctid))
            notes.append(f"saved to {rt.paths.conf(ctid)}")
    return notes


def ubc_notes(version: int, values: dict[str, str]) -> list[str]:
    """Warnings for beancounters this host only accounts; a UsageError for a limit
    on one it can neither enforce nor count (ubctable.Mode.REFUSED), before
    anything changes.  'unlimited' is always accepted."""
    notes: list[str] = []
    for key, value in values.items():
        u = BY_KEY.get(key)
        if u is None or not value:
            continue
        mode = u.mode(version)
        b, lim = parse_barrier_limit(value, pages=u.unit is Unit.PAGES,
                                     sizes=u.unit is Unit.BYTES)
        if mode is Mode.REFUSED and (b < UNLIMITED or lim < UNLIMITED):
            raise UsageError(f"--{u.option}: {key} cannot be enforced or counted on this "
                             f"host (cgroup v{version}): {u.v1_how if version == 1 else u.v2_how}",
                             hint=f"leave it out, or give --{u.option} unlimited")
        if mode is Mode.ACCOUNTED and lim < UNLIMITED:
            notes.append(f"warning: {key} is accounted, not enforced, on this host "
                         f"(cgroup v{version}): vzubc shows its use against the limit, "
                         "but nothing refuses the VE at it")
    return notes


def _disk(rt: Runtime, ctid: int, values: dict[str, str], cfg: VeConfig, new: VeConfig,
          *, running: bool) -> list[str]:
    """Apply the disk limits in *values* to VE *ctid*'s disk image (live when
    *running*); QuotaError, and nothing changed, when that cannot be done."""
    quota.check_values(values)
    old_l, new_l = quota.of_config(cfg.get), quota.of_config(new.get)
    if diskimage.has_image(rt.paths, ctid):
        return diskresize.resize(rt.paths, ctid, old_l, new_l, running)
    if new_l.limited:
        raise quota.QuotaError(
            f"VE {ctid} was created without a disk limit: its files are not on a disk "
            "image of their own, and a limit cannot be added later; nothing was changed",
            hint=f"give the limit when creating a VE: vzctl create CTID --diskspace "
                 f"{values.get('DISKSPACE', '10G')} ...")
    return []


def _ioprio_unused(rt: Runtime, values: dict[str, str]) -> str:
    """A warning when *values* sets an IOPRIO this host does nothing with, else "".
    IOPRIO is a weight for the I/O scheduler: BFQ (io.bfq.weight, v1
    blkio.bfq.weight) or cgroup v2's io.cost controller (io.weight); a host whose
    disks use neither keeps the value for later and runs the VE without it."""
    prio = values.get("IOPRIO")
    if prio is None or prio == str(DEFAULT_IOPRIO):
        return ""
    cg = rt.cgroups
    why = cg.io_schedulers().unused_because(cg.version)
    if not why:
        return ""
    return f"warning: IOPRIO {prio} has no effect on this host: {why}; the VE runs without it"


def _live(key: str) -> bool:
    """Whether *key* can change a running VE (the parameter table's ``live``)."""
    p = find_param(key)
    return p is not None and p.live


def _keep_live(rt: Runtime, ctid: int, live: VeConfig, saved: VeConfig) -> None:
    """Record in ``run/CTID.live`` every live key whose value the running VE has and
    CTID.conf (as it will be saved) has not: the next live set starts from there."""
    keys = dict.fromkeys([*live.keys(), *saved.keys()])
    differ = {k: live.get(k) or "" for k in keys if _live(k) and live.get(k) != saved.get(k)}
    path = rt.paths.livefile(ctid)
    if not differ:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, "# what vzctl set changed in the running VE without --save\n"
                 + VeConfig().with_values(differ).render())


def _check_name_free(rt: Runtime, ctid: int, name: str) -> None:
    """Refuse a NAME another VE of the root has: a name stands for one VE."""
    for other in rt.paths.ctids():
        if other != ctid and lenient_values(rt.paths.conf(other)).get("NAME") == name:
            raise NameInUseError(f"the name {name!r} is already VE {other}'s",
                                 hint=f"pick another name, or give VE {other} another one "
                                      f"first: vzctl set {other} --name NEW --save")


def _live_dist(rt: Runtime, ctid: int, pid: int, setup: dists.DistSetup,
               hostname: str | None) -> None:
    def inside() -> int:
        dists.apply(setup)
        return 0
    cg = rt.cgroups
    code = join.join(join.JoinSpec(pid=pid, argv=["vzctl-set"], func=inside,
                                   hostname=hostname, userns=rt.userns(ctid),
                                   attach=lambda p: cg.attach(str(ctid), p)))
    if code != 0:
        raise VeError(f"could not apply the settings inside VE {ctid} (status {code})")
