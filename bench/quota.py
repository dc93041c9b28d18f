"""Disk quota's cost, against VEs without one in the same run.

    python bench/quota.py [--runs N] [--create-runs N] [--write-mib N] [--only PART,...]

A VE with a disk limit lives on an ext4 image of its own, loop-mounted
(vzpkg.runtime.quota).  Measured, with medians over --runs alternating rounds
(quota, none, quota, none, ...), each ratio quota/none:

- create, plain layout, from the Debian cache (the builder's, else busybox):
  the image's mkfs and mount plus the unpack through the loop device;
- create, overlay layout (the shared copy made beforehand), --create-runs rounds
  (each takes about 10 ms, and the machine is noisy);
- the first start of a new overlay VE (where an image is copied from its pristine
  image and written out, diskimage.settle_image), and that copy alone;
- a write-heavy workload in a running VE: dd of --write-mib MiB with fsync
  (conv=fsync), and the same without fsync (page cache and writeback);
- changing the limit of a running VE: ``Runtime.set`` lowering (balloon grows)
  and raising (balloon shrinks), and the same through the vzctl command;
- an offline resize (vzctl set --save of a stopped VE: e2fsck + resize2fs).

Target (issue 14): quota overhead at most 5 % on create and on writes.  Needs
root.  Writes bench/results/quota.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, write_results
from tests.runtime_helpers import BUSYBOX_NAME, find_debian_cache, make_busybox_cache, sh
from vzpkg.runtime import diskimage, diskmount, quota
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

LIMIT = {"DISKSPACE": "4194304:4194304"}        # 4 GiB
PARTS = ("create_plain", "create_overlay", "first_start", "write", "fio")
BASE = 14000


def _ms(x: float) -> float:
    return round(x * 1000, 1)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc_syncfs(fd)
    finally:
        os.close(fd)


def libc_syncfs(fd: int) -> None:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs")


def bench_create(rt: Runtime, cache: str, layout: str, runs: int,
                 durable: bool = False) -> dict[str, Any]:
    """With *durable*, each create is followed by syncfs of VZ_ROOT's file system
    (and one before it), so both runs pay for writing their tree out: without it,
    the VE without quota leaves its tree dirty in the page cache while the image's
    unmount writes it."""
    with_q: list[float] = []
    without: list[float] = []
    root = rt.paths.root

    def one(c: int, v: dict[str, str] | None) -> None:
        rt.create(c, cache, layout_name=layout, values=v)
        if durable:
            _syncfs(root)
    for i in range(runs):
        for with_quota, out in ((True, with_q), (False, without)):
            ctid = BASE + 2 * i + (0 if with_quota else 1)
            vals = LIMIT if with_quota else None
            if durable:
                _syncfs(root)
            out.append(_timed(lambda c=ctid, v=vals: one(c, v)))
            rt.destroy(ctid)
    q, n = median(with_q), median(without)
    return {"quota_ms": _ms(q), "none_ms": _ms(n), "ratio": round(q / n, 3),
            "runs_quota_ms": [_ms(x) for x in with_q],
            "runs_none_ms": [_ms(x) for x in without]}


def bench_first_start(rt: Runtime, cache: str, runs: int) -> dict[str, Any]:
    """The first start (and a stop) of a new overlay VE with and without an image:
    the image's file system is copied from its pristine image at its first mount
    (diskimage.settle_image: copy, fdatasync, fsync).  Plus that copy alone, on VEs made
    for it and never started."""
    with_q: list[float] = []
    without: list[float] = []
    for i in range(runs):
        for with_quota, out in ((True, with_q), (False, without)):
            ctid = BASE + 200 + 2 * i + (0 if with_quota else 1)
            rt.create(ctid, cache, layout_name="overlay", values=LIMIT if with_quota else None)
            out.append(_timed(lambda c=ctid: rt.start(c)))
            rt.stop(ctid)
            rt.destroy(ctid)
    settle = []
    for i in range(runs):
        ctid = BASE + 300 + i
        rt.create(ctid, cache, layout_name="overlay", values=LIMIT)
        img = diskimage.image_path(rt.paths, ctid)
        settle.append(_timed(lambda c=ctid, im=img: diskimage.settle_image(im, c)))
        rt.destroy(ctid)
    q, n = median(with_q), median(without)
    return {"quota_ms": _ms(q), "none_ms": _ms(n), "ratio": round(q / n, 3),
            "settle_ms": _ms(median(settle)),
            "runs_quota_ms": [_ms(x) for x in with_q],
            "runs_none_ms": [_ms(x) for x in without],
            "runs_settle_ms": [_ms(x) for x in settle]}


def bench_write(rt: Runtime, cache: str, runs: int, mib: int) -> dict[str, Any]:
    """The same writes in a VE on an image of the create benchmark's size (LIMIT)
    and in one without quota; plus the near-full case: an image only 256 MiB larger
    than what is written (ext4 starts writeback early when dirty data nears the
    free space, as it would on any small file system)."""
    q_ctid, n_ctid, s_ctid = BASE + 100, BASE + 101, BASE + 102
    rt.create(q_ctid, cache, values=LIMIT)
    rt.create(n_ctid, cache)
    rt.create(s_ctid, cache, values={"DISKSPACE": f"{(mib + 256) * 1024}"})
    out: dict[str, Any] = {"mib": mib}
    dd = f"dd if=/dev/zero of=/w bs=1M count={mib}"
    jobs = [("dd_fsync", f"{dd} conv=fsync 2>/dev/null"), ("dd_nofsync", f"{dd} 2>/dev/null")]
    try:
        for ctid in (q_ctid, n_ctid, s_ctid):
            rt.start(ctid)
        for name, cmd in jobs:
            res: dict[int, list[float]] = {q_ctid: [], n_ctid: [], s_ctid: []}
            for _ in range(runs):
                for ctid in (q_ctid, n_ctid, s_ctid):
                    t = _timed(lambda c=ctid, cm=cmd: _check(sh(rt, c, cm)))
                    _check(sh(rt, ctid, "rm -f /w; sync"))
                    res[ctid].append(t)
            q, n, sm = median(res[q_ctid]), median(res[n_ctid]), median(res[s_ctid])
            out[name] = {"quota_ms": _ms(q), "none_ms": _ms(n), "ratio": round(q / n, 3),
                         "quota_mib_s": round(mib / q, 1), "none_mib_s": round(mib / n, 1),
                         "near_full_ms": _ms(sm), "near_full_ratio": round(sm / n, 3)}
        rt.stop(q_ctid)
        rt.stop(n_ctid)
        out["set_live"] = bench_set(rt, s_ctid, runs, mib)
    finally:
        for ctid in (q_ctid, n_ctid, s_ctid):
            rt.destroy(ctid)
    return out


def bench_fio(root: Path, runs: int, mib: int) -> dict[str, Any]:
    """fio (when installed) on an image made and mounted as a VE's is (mkfs_argv,
    the same loop set-up) against a directory of the host's file system beside it:
    sequential 1 MiB writes and random 4 KiB writes, each ending with fsync."""
    fio = shutil.which("fio")
    if not fio:
        return {"skipped": "fio is not installed"}
    img, mnt, host = root / "fio.img", root / "fio.mnt", root / "fio.host"
    host.mkdir()
    lim = quota.of_config(LIMIT.get)
    img.write_bytes(b"")
    os.truncate(img, lim.image_bytes())
    subprocess.run([*diskimage.mkfs_argv("fio", lim), str(img)], check=True, capture_output=True)
    diskmount.mount(img, mnt, 0)
    jobs = {"fio_seq_fsync": ["--rw=write", "--bs=1M", f"--size={mib}M"],
            "fio_rand4k_fsync": ["--rw=randwrite", "--bs=4k", f"--size={max(mib // 4, 16)}M"]}
    out: dict[str, Any] = {"mib": mib}
    try:
        for name, args in jobs.items():
            res: dict[str, list[float]] = {"quota": [], "none": []}
            for _ in range(runs):
                for k, d in (("quota", mnt), ("none", host)):
                    argv = [fio, "--name=w", f"--directory={d}", "--ioengine=psync",
                            "--end_fsync=1", "--output-format=terse", *args]
                    res[k].append(_timed(lambda a=argv: subprocess.run(
                        a, check=True, capture_output=True)))
                    for f in d.glob("w.*"):
                        f.unlink()
                    _syncfs(d)
            q, n = median(res["quota"]), median(res["none"])
            out[name] = {"quota_ms": _ms(q), "none_ms": _ms(n), "ratio": round(q / n, 3)}
    finally:
        diskmount.umount(mnt)
    return out


def bench_set(rt: Runtime, ctid: int, runs: int, mib: int) -> dict[str, Any]:
    size_k = (mib + 256) * 1024
    lower, raise_ = [], []
    cli_lower, cli_raise = [], []
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    argv = [sys.executable, "-m", "vzpkg.cli.vzctl", "set", str(ctid), "--diskspace"]
    for _ in range(max(runs, 5)):
        lower.append(_timed(lambda: rt.set(ctid, {"DISKSPACE": f"{size_k // 2}"})))
        raise_.append(_timed(lambda: rt.set(ctid, {"DISKSPACE": f"{size_k}"})))
        cli_lower.append(_timed(lambda: subprocess.run(
            [*argv, f"{size_k // 2}"], env=env, check=True, capture_output=True)))
        cli_raise.append(_timed(lambda: subprocess.run(
            [*argv, f"{size_k}"], env=env, check=True, capture_output=True)))
    rt.stop(ctid)
    offline = []
    for i in range(3):
        k = size_k // 2 if i % 2 == 0 else size_k
        offline.append(_timed(lambda k=k: rt.set(ctid, {"DISKSPACE": f"{k}"}, save=True)))
    return {"lower_ms": _ms(median(lower)), "raise_ms": _ms(median(raise_)),
            "cli_lower_ms": _ms(median(cli_lower)), "cli_raise_ms": _ms(median(cli_raise)),
            "offline_resize_ms": _ms(median(offline)),
            "lowered_by_mib": size_k // 2 // 1024}


def _check(r: tuple[int, str]) -> None:
    if r[0] != 0:
        raise SystemExit(f"command in the VE failed: {r[1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--create-runs", type=int, default=31,
                    help="rounds of the overlay create (default 31)")
    ap.add_argument("--write-mib", type=int, default=256)
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"a comma-separated subset of {','.join(PARTS)} (while "
                         "iterating; the results are then printed, not written)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(PARTS):
        ap.error(f"--only: unknown part(s) {','.join(sorted(only - set(PARTS)))}; "
                 f"choose from {','.join(PARTS)}")
    base = Path(tempfile.mkdtemp(prefix="vzbench-quota-", dir="/var/tmp"))
    try:
        caches = base / "caches"
        found = find_debian_cache()
        cache_dirs = [found[0]] if found else [caches]
        cache = found[1] if found else BUSYBOX_NAME
        make_busybox_cache(caches)
        rt = Runtime(VzPaths(base / "vz"), [*cache_dirs, caches])
        data: dict[str, Any] = {"cache": cache, "limit_kib": LIMIT["DISKSPACE"],
                                "vz_root_fs": subprocess.run(
                                    ["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)],
                                    capture_output=True, text=True).stdout.strip()}
        rt.create(BASE - 1, cache, layout_name="overlay")    # the shared copy, once
        if "create_plain" in only:
            data["create_plain"] = bench_create(rt, cache, "plain", args.runs)
            data["create_plain_durable"] = bench_create(rt, cache, "plain", args.runs,
                                                        durable=True)
        if "create_overlay" in only:
            data["create_overlay"] = bench_create(rt, cache, "overlay", args.create_runs)
            data["create_overlay_durable"] = bench_create(rt, cache, "overlay",
                                                          args.create_runs, durable=True)
        rt.destroy(BASE - 1)
        if "first_start" in only:
            rt.create(BASE - 1, BUSYBOX_NAME, layout_name="overlay")
            data["first_start"] = bench_first_start(rt, BUSYBOX_NAME, max(args.runs, 7))
            rt.destroy(BASE - 1)
        if "write" in only:
            data["write"] = bench_write(rt, BUSYBOX_NAME, args.runs, args.write_mib)
        if "fio" in only:
            data["fio"] = bench_fio(base, args.runs, args.write_mib)
        out = write_results("quota", data) if only == set(PARTS) else None
        for k in ("create_plain", "create_plain_durable", "create_overlay",
                  "create_overlay_durable", "first_start"):
            if k not in data:
                continue
            d = data[k]
            print(f"{k:15} quota {d['quota_ms']:9.1f} ms  none {d['none_ms']:9.1f} ms  "
                  f"ratio {d['ratio']}")
        if "first_start" in data:
            print(f"{'settle alone':15} {data['first_start']['settle_ms']:9.1f} ms")
        w = data.get("write", {})
        for k in ("dd_fsync", "dd_nofsync") if w else ():
            d = w[k]
            print(f"{k:16} quota {d['quota_ms']:9.1f} ms  none {d['none_ms']:9.1f} ms  "
                  f"ratio {d['ratio']}  ({d['quota_mib_s']} vs {d['none_mib_s']} MiB/s)"
                  f"  near full {d['near_full_ratio']}")
        for k, d in data.get("fio", {}).items():
            if isinstance(d, dict):
                print(f"{k:16} quota {d['quota_ms']:9.1f} ms  none {d['none_ms']:9.1f} ms  "
                      f"ratio {d['ratio']}")
        if w:
            print("set live       ", w["set_live"])
        print(f"results: {out or 'not written (--only)'}")
    finally:
        with_rt = Runtime(VzPaths(base / "vz"))
        for ctid in with_rt.ctids():
            try:
                with_rt.destroy(ctid)
            except Exception as exc:
                print(f"cleanup of {ctid}: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
