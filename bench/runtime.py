"""The runtime's speed and density, against bare baselines in the same run.

    python bench/runtime.py [--cache-dir DIR] [--name CACHE] [--runs N] [--density N]
                            [--against REF [--rounds N]]

Uses the Debian cache from the builder when one is found (--cache-dir,
$VZPKG_CACHE_DIR, caches/ of the repository), else a busybox cache made with
``vzpkg import``.  Measures, with medians over --runs rounds:

- create (plain) against ``zstd -dc CACHE | tar -x`` into the same file system;
- create (overlay), once the shared copy exists (the first one is reported apart);
- start until ``/bin/true`` has been exec'd in the VE, against a bare
  ``unshare --mount --uts --ipc --net --pid --fork chroot DIR /bin/true``;
- stop (the init's shutdown signal) and stop --fast;
- start until systemd reports running or degraded, and its clean stop (a systemd tree);
- density: start --density VEs (overlay, one cache), then host memory per running
  VE, split into the VEs' own processes (PSS) and what the host spends beyond them;
- idle (issue 13): host memory per idle VE running systemd, journald, sshd and cron:
  --idle VEs of a Debian ``default`` cache (--idle-cache; found next to the other
  cache), each booted and checked to run the four, then the same split as density,
  and what each VE's memory cgroup is charged (its processes, their page cache and
  kernel objects: unlike MemAvailable, not moved by whatever else the host runs).
  The seed's figure (120 VEs in 768 MB, 6.4 MiB each) is printed beside it.

``--only STEP[,STEP]`` runs some of create, start, density, idle (results then go to
bench/results/runtime_STEPS.json, leaving runtime.json as the full run wrote it).

Targets (issue 5): plain create <= 1.2x tar, overlay create < 50 ms, start < 150 ms,
overhead per idle VE < 2 MB.  Needs root.  Writes bench/results/runtime.json.

``--against REF`` compares this checkout's create (plain, overlay), start, exec and
stop with the code at git revision REF (checked out in a temporary worktree) in
the same run: --rounds alternating rounds, each in a fresh process per side, and
reports each side's median and the ratio this/REF (bench/results/runtime_vs_REF.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# VZBENCH_CODE: run against another checkout's vzpkg (see --against)
sys.path.insert(0, os.environ.get("VZBENCH_CODE") or str(Path(__file__).resolve().parents[1]))

from bench.common import median, write_results
from tests.runtime_helpers import BUSYBOX_NAME, find_debian_cache, make_busybox_cache
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime, shutdown_signal

BASE = 8000


def _ms(x: float) -> float:
    return round(x * 1000, 1)


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tar_extract(tarball: Path, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(f"zstd -dc '{tarball}' | tar -x --numeric-owner -p -C '{dest}'",
                   shell=True, check=True, stderr=subprocess.DEVNULL)


def bench_create(rt: Runtime, name: str, tarball: Path, work: Path, runs: int
                 ) -> dict[str, Any]:
    plain, tar, overlay = [], [], []
    first_overlay = 0.0
    for i in range(runs):
        d = work / f"tar{i}"
        t0 = time.perf_counter()
        tar_extract(tarball, d)
        tar.append(time.perf_counter() - t0)
        shutil.rmtree(d)
        t0 = time.perf_counter()
        rt.create(BASE + i, name, layout_name="plain")
        plain.append(time.perf_counter() - t0)
        rt.destroy(BASE + i)
    keep = BASE + 99  # holds the shared copy while the others come and go
    t0 = time.perf_counter()
    rt.create(keep, name, layout_name="overlay")
    first_overlay = time.perf_counter() - t0
    for i in range(runs):
        t0 = time.perf_counter()
        rt.create(BASE + i, name, layout_name="overlay")
        overlay.append(time.perf_counter() - t0)
        rt.destroy(BASE + i)
    rt.destroy(keep)
    ratio = median(plain) / median(tar)
    return {
        "create_plain_ms": _ms(median(plain)), "tar_extract_ms": _ms(median(tar)),
        "create_plain_vs_tar": round(ratio, 3), "create_plain_target_met": ratio <= 1.2,
        "create_overlay_ms": _ms(median(overlay)),
        "create_overlay_first_ms": _ms(first_overlay),
        "create_overlay_target_met": median(overlay) < 0.05,
    }


def bench_start_stop(rt: Runtime, name: str, work: Path, runs: int) -> dict[str, Any]:
    devnull = os.open("/dev/null", os.O_RDWR)
    ctid = BASE + 50
    rt.create(ctid, name, layout_name="overlay", ipadd=["198.18.80.50"])
    bare_root = work / "bare"
    tar_extract(rt.find_cache(name).tarball, bare_root)
    start, start_exec, stop, fast, bare = [], [], [], [], []
    try:
        for i in range(runs):
            t0 = time.perf_counter()
            subprocess.run(["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
                            "chroot", str(bare_root), "/bin/true"], check=True)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.start(ctid)
            t1 = time.perf_counter()
            code = rt.exec(ctid, ["/bin/true"], (devnull, devnull, devnull))
            t2 = time.perf_counter()
            assert code == 0
            start.append(t1 - t0)
            start_exec.append(t2 - t0)
            t0 = time.perf_counter()
            if i % 2:
                rt.stop(ctid, fast=True)
                fast.append(time.perf_counter() - t0)
            else:
                rt.stop(ctid)
                stop.append(time.perf_counter() - t0)
    finally:
        os.close(devnull)
        rt.destroy(ctid)
        shutil.rmtree(bare_root, ignore_errors=True)
    ratio = median(start_exec) / median(bare)
    booted = _start_to_running(rt, name, runs)
    return {
        **booted,
        "start_ms": _ms(median(start)), "start_to_exec_ms": _ms(median(start_exec)),
        "bare_unshare_chroot_true_ms": _ms(median(bare)),
        "start_vs_bare": round(ratio, 2), "start_target_met": median(start_exec) < 0.15,
        "stop_ms": _ms(median(stop)), "stop_fast_ms": _ms(median(fast or stop)),
    }


def _start_to_running(rt: Runtime, name: str, runs: int) -> dict[str, Any]:
    """Start until the VE's init says it is up (systemd: is-system-running is running
    or degraded), then a clean stop; medians.  Only for a tree whose init is systemd."""
    ctid = BASE + 51
    rt.create(ctid, name, layout_name="overlay", ipadd=["198.18.80.51"])
    up, stop, states = [], [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            pid = rt.start(ctid)
            if shutdown_signal(pid) == signal.SIGTERM:
                rt.stop(ctid, fast=True)
                return {"init": "shell"}
            states.append(rt.wait_booted(ctid))
            up.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.stop(ctid)
            stop.append(time.perf_counter() - t0)
    finally:
        rt.destroy(ctid)
    return {"init": "systemd", "start_to_running_ms": _ms(median(up)),
            "start_to_running_target_met": median(up) < 1.0,
            "systemd_states": sorted(set(states)), "systemd_stop_ms": _ms(median(stop))}


def bench_ops(rt: Runtime, name: str, runs: int) -> dict[str, list[float]]:
    """One side of --against: seconds per create (plain, overlay), start, exec
    (/bin/true in a running VE) and stop, *runs* of each."""
    devnull = os.open("/dev/null", os.O_RDWR)
    out: dict[str, list[float]] = {k: [] for k in ("create_plain", "create_overlay",
                                                   "start", "exec", "stop")}
    keep = BASE + 98
    rt.create(keep, name, layout_name="overlay")        # holds the shared copy
    try:
        t0 = time.perf_counter()
        rt.create(BASE, name, layout_name="plain")
        out["create_plain"].append(time.perf_counter() - t0)
        rt.destroy(BASE)
        for i in range(runs):
            ctid = BASE + 1 + i
            t0 = time.perf_counter()
            rt.create(ctid, name, layout_name="overlay", ipadd=[f"198.18.81.{i + 1}"])
            out["create_overlay"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.start(ctid)
            out["start"].append(time.perf_counter() - t0)
            for _ in range(3):
                t0 = time.perf_counter()
                assert rt.exec(ctid, ["/bin/true"], (devnull, devnull, devnull)) == 0
                out["exec"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.stop(ctid)
            out["stop"].append(time.perf_counter() - t0)
            rt.destroy(ctid)
    finally:
        os.close(devnull)
        rt.destroy(keep)
    return out


def against(ref: str, cache_dir: Path, name: str, rounds: int, runs: int, work: Path
            ) -> dict[str, Any]:
    """This checkout against *ref*, alternating rounds in fresh processes."""
    import json
    repo = Path(__file__).resolve().parents[1]
    tree = work / "ref"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(tree),
                    ref], check=True, capture_output=True)
    sides = {"this": repo, "ref": tree}
    got: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    try:
        for rnd in range(rounds):
            for side in (("this", "ref") if rnd % 2 == 0 else ("ref", "this")):
                env = {**os.environ, "VZBENCH_CODE": str(sides[side])}
                r = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                    "--ops-json", "--cache-dir", str(cache_dir), "--name",
                                    name, "--runs", str(runs), "--workdir", str(work)],
                                   env=env, capture_output=True, text=True, check=False)
                if r.returncode != 0:
                    raise SystemExit(f"{side} round {rnd} failed:\n{r.stderr[-3000:]}")
                for k, v in json.loads(r.stdout.splitlines()[-1]).items():
                    got[side].setdefault(k, []).extend(v)
            print(f"round {rnd + 1}/{rounds} done", flush=True)
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", ref],
                         capture_output=True, text=True, check=False).stdout.strip()
    res: dict[str, Any] = {"against": ref, "against_rev": rev, "cache": name,
                           "rounds": rounds, "runs_per_round": runs}
    for k in got["this"]:
        a, b = median(got["this"][k]), median(got["ref"][k])
        res[f"{k}_ms"] = _ms(a)
        res[f"{k}_ref_ms"] = _ms(b)
        res[f"{k}_vs_ref"] = round(a / b, 3)
    return res


def bench_density(rt: Runtime, name: str, n: int) -> dict[str, Any]:
    ids = [BASE + 100 + i for i in range(n)]
    for c in ids:
        rt.create(c, name, layout_name="overlay")
    time.sleep(1)
    before = meminfo()
    t0 = time.perf_counter()
    for c in ids:
        rt.start(c)
    took = time.perf_counter() - t0
    for c in ids:           # idle means booted: systemd has started what it starts
        rt.wait_booted(c, timeout=600)
    booted = time.perf_counter() - t0
    time.sleep(2)
    after = meminfo()
    own = sum(pss(p) for c in ids for p in rt.cgroups.procs(str(c)))
    nproc = sum(len(rt.cgroups.procs(str(c))) for c in ids)
    used = (before["MemAvailable"] - after["MemAvailable"])
    kernel = sum(after[k] - before[k] for k in ("Slab", "KernelStack", "PageTables"))
    t0 = time.perf_counter()
    for c in ids:
        rt.stop(c, fast=True)
    stop_all = time.perf_counter() - t0
    for c in ids:
        rt.destroy(c)
    per_ve = used / n
    overhead = (used - own) / n
    return {
        "density_ves": n, "density_start_all_s": round(took, 2),
        "density_all_booted_s": round(booted, 2),
        "density_stop_all_s": round(stop_all, 2),
        "density_processes": nproc,
        "host_memory_per_ve_kib": round(per_ve / 1024, 1),
        "ve_processes_pss_per_ve_kib": round(own / n / 1024, 1),
        "overhead_per_ve_kib": round(overhead / 1024, 1),
        "kernel_slab_stack_pt_per_ve_kib": round(kernel / n / 1024, 1),
        "overhead_target_met": overhead < 2 * 1024 * 1024,
    }


# what "an idle VE running systemd, journald, sshd and cron" runs: process names
IDLE_SERVICES = {"systemd": "systemd", "journald": "systemd-journal", "sshd": "sshd",
                 "cron": "cron"}
SEED_MIB_PER_VE = 768 / 120


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def idle_cache(cache_dirs: list[Path], name: str) -> str | None:
    """The ``default`` set of the Debian cache *name* (or *name* itself), if built."""
    from vzpkg.store.cachestore import CacheStore
    parts = name.split("-")
    want = "-".join([*parts[:3], "default"]) if len(parts) >= 4 else name
    for d in cache_dirs:
        if CacheStore(d).tarball(want) is not None:
            return want
    return None


def bench_idle(rt: Runtime, name: str, n: int) -> dict[str, Any]:
    """Host memory per idle VE running systemd, journald, sshd and cron: *n* VEs of
    cache *name* (overlay), each booted (systemd says running or degraded) and checked
    to run the four, then left alone for a while."""
    ids = [BASE + 300 + i for i in range(n)]
    for c in ids:
        rt.create(c, name, layout_name="overlay")
    try:
        time.sleep(1)
        before = meminfo()
        for c in ids:
            rt.start(c)
        states = [rt.wait_booted(c, timeout=600) for c in ids]
        time.sleep(10)          # idle: what boot started has settled
        after = meminfo()
        running: list[set[str]] = []
        own = charged = nproc = 0
        for c in ids:
            procs = rt.cgroups.procs(str(c))
            nproc += len(procs)
            running.append({_comm(p) for p in procs})
            own += sum(pss(p) for p in procs)
            # what the kernel charges to the VE's memory cgroup: its processes, their
            # page cache and kernel objects (the others on the host do not count here)
            charged += next((bc.held * 4096 for bc in rt.cgroups.counters(str(c))
                             if bc.resource == "physpages"), 0)
        missing = sorted({svc for names in running for svc, comm in IDLE_SERVICES.items()
                          if comm not in names})
    finally:
        for c in ids:
            rt.stop(c, fast=True)
            rt.destroy(c)
    used = before["MemAvailable"] - after["MemAvailable"]
    kernel = sum(after[k] - before[k] for k in ("Slab", "KernelStack", "PageTables"))
    per_ve = used / n
    return {
        "idle_cache": name, "idle_ves": n, "idle_systemd_states": sorted(set(states)),
        "idle_services": sorted(IDLE_SERVICES), "idle_services_missing": missing,
        "idle_processes_per_ve": round(nproc / n, 1),
        "idle_host_memory_per_ve_mib": round(per_ve / (1 << 20), 2),
        "idle_ve_processes_pss_per_ve_mib": round(own / n / (1 << 20), 2),
        "idle_cgroup_memory_per_ve_mib": round(charged / n / (1 << 20), 2),
        "idle_kernel_slab_stack_pt_per_ve_mib": round(kernel / n / (1 << 20), 2),
        "idle_seed_mib_per_ve": round(SEED_MIB_PER_VE, 2),
        "idle_cgroup_vs_seed": round(charged / n / (1 << 20) / SEED_MIB_PER_VE, 2),
    }


STEPS = ("create", "start", "density", "idle")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--name")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--density", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch directory (default: a temporary one under /var/tmp)")
    ap.add_argument("--against", metavar="REF",
                    help="compare create/start/exec/stop with the code at git REF")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (--against)")
    ap.add_argument("--idle", type=int, default=10, metavar="N",
                    help="idle VEs running systemd, journald, sshd and cron (0: skip)")
    ap.add_argument("--idle-cache", metavar="NAME",
                    help="their cache (default: the default set of the Debian cache)")
    ap.add_argument("--only", metavar="STEPS",
                    help=f"run only these steps, comma-separated: {','.join(STEPS)}")
    ap.add_argument("--ops-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/runtime.py needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vzbench-", dir=args.workdir or "/var/tmp"))
    try:
        if args.cache_dir and args.name:
            cache_dir, name = args.cache_dir, args.name
        elif (found := find_debian_cache()) is not None:
            cache_dir, name = found
        else:
            cache_dir, name = work / "caches", BUSYBOX_NAME
            make_busybox_cache(cache_dir)
        rt = Runtime(VzPaths(work / "vz"), [cache_dir])
        if args.ops_json:
            import json
            print(json.dumps(bench_ops(rt, name, args.runs)))
            return 0
        if args.against:
            cmp = against(args.against, cache_dir, name, args.rounds, args.runs, work)
            print(cmp, flush=True)
            safe = "".join(c if c.isalnum() else "_" for c in args.against)
            print(f"wrote {write_results(f'runtime_vs_{safe}', cmp)}")
            return 0
        steps = args.only.split(",") if args.only else list(STEPS)
        if set(steps) - set(STEPS):
            ap.error(f"--only: unknown step(s) {sorted(set(steps) - set(STEPS))}; "
                     f"steps are {','.join(STEPS)}")
        tarball = rt.find_cache(name).tarball
        print(f"cache {name} ({tarball.stat().st_size >> 20} MiB), {args.runs} runs",
              flush=True)
        res: dict[str, Any] = {"cache": name, "cache_bytes": tarball.stat().st_size,
                               "runs": args.runs}
        if "create" in steps:
            res.update(bench_create(rt, name, tarball, work, args.runs))
            print({k: v for k, v in res.items() if "create" in k or "tar" in k}, flush=True)
        if "start" in steps:
            res.update(bench_start_stop(rt, name, work, args.runs))
            print({k: v for k, v in res.items() if "start" in k or "stop" in k}, flush=True)
        if args.density and "density" in steps:
            res.update(bench_density(rt, name, args.density))
            print({k: v for k, v in res.items() if "density" in k or "per_ve" in k},
                  flush=True)
        if args.idle and "idle" in steps:
            idle = args.idle_cache or idle_cache(rt.cache_dirs, name)
            if idle is None:
                res["idle_skipped"] = (f"no Debian default cache next to {name}: build it "
                                       "(vzpkg build debian-12-x86_64-default) or name one "
                                       "with --idle-cache")
            else:
                res.update(bench_idle(rt, idle, args.idle))
            print({k: v for k, v in res.items() if k.startswith("idle")}, flush=True)
        out = write_results("runtime" if not args.only else
                            "runtime_" + "_".join(steps), res)
        print(f"wrote {out}")
    finally:
        rt_root = work / "vz"
        if rt_root.exists():
            r = Runtime(VzPaths(rt_root))
            for c in r.ctids():
                try:
                    r.destroy(c)
                except Exception as exc:
                    print(f"cleanup of VE {c} failed: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
