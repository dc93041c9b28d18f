"""Installing the same packages into many VEs: vzpkg against apt in each VE alone.

    python bench/mass_update.py [--sizes 1,10,50] [--jobs 8] [--packages hello,tree,jq]
                                [--cache-dir DIR] [--no-baseline] [--baseline-sizes 1,10]

For each N in --sizes, N overlay VEs of the builder's Debian cache (stopped: each
is mounted for its command only) get --packages installed:

- **vzpkg**: ``vzpkg install --all PACKAGES --jobs J`` on a package cache that
  starts empty: every VE's apt runs in the VE, through the host's proxy, which
  downloads each file once;
- **baseline**: apt run separately in each VE, one VE after the other, each with
  downloads of its own (``vzpkg install CTID`` with a fresh, empty package cache
  per VE: the same in-VE apt and the same path to the mirror, without sharing).

Reports the wall time and the bytes downloaded from the mirror of each, and the
ratios the issue sets as targets: time(N=50) <= 10x time(N=1), bytes(N) ==
bytes(1).  Needs root and the Debian mirror.  Writes bench/results/mass_update.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.runtime_helpers import find_debian_cache
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

BASE = 17000


def vzpkg(root: Path, cache_dir: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "VZ_ROOT": str(root)}
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir",
                        str(cache_dir), *args, "--json"], env=env, capture_output=True,
                       text=True, check=False)
    try:
        out: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        raise SystemExit(f"vzpkg failed ({r.returncode}): {r.stderr}") from None
    if not out["ok"]:
        bad = [x for x in out["results"] if not x["ok"]]
        raise SystemExit(f"vzpkg: {len(bad)} VEs failed: {bad[:2]}")
    return out


def one_size(n: int, cache: tuple[Path, str], packages: list[str], jobs: int,
             baseline: bool, work: Path) -> dict[str, Any]:
    root = work / f"vz-{n}"
    rt = Runtime(VzPaths(root), [cache[0]])
    ctids = [BASE + i for i in range(n)]
    for c in ctids:
        rt.create(c, cache[1], layout_name="overlay")
    try:
        shared = work / f"shared-{n}"
        t0 = time.monotonic()
        out = vzpkg(root, shared, "install", "--all", *packages, "--jobs", str(jobs))
        took = time.monotonic() - t0
        res: dict[str, Any] = {"ves": n, "vzpkg_seconds": round(took, 2),
                               "vzpkg_bytes": out["proxy"]["downloaded_bytes"],
                               "vzpkg_downloads": out["proxy"]["downloads"]}
        print(f"N={n}: vzpkg {took:.1f} s, {res['vzpkg_bytes']} bytes", flush=True)
        if baseline:
            for c in ctids:     # back to the VEs as they were: the overlay's upper dir
                rt.destroy(c)
                rt.create(c, cache[1], layout_name="overlay")
            total, nbytes = 0.0, 0
            for c in ctids:
                own = work / f"own-{n}-{c}"
                t0 = time.monotonic()
                out = vzpkg(root, own, "install", str(c), *packages)
                total += time.monotonic() - t0
                nbytes += out["proxy"]["downloaded_bytes"]
                shutil.rmtree(own, ignore_errors=True)
            res.update(baseline_seconds=round(total, 2), baseline_bytes=nbytes)
            print(f"N={n}: apt in each VE alone {total:.1f} s, {nbytes} bytes", flush=True)
        return res
    finally:
        for c in ctids:
            rt.destroy(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--packages", default="hello,tree,jq")
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--baseline-sizes", default="1,10",
                    help="run the baseline (one VE after the other) for these N only")
    args = ap.parse_args()
    if args.cache_dir:
        os.environ["VZPKG_CACHE_DIR"] = str(args.cache_dir)
    cache = find_debian_cache()
    if cache is None:
        raise SystemExit("no Debian cache: vzpkg build debian-12 first (or --cache-dir)")
    packages = args.packages.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vzbench-mass-") as tmp:
        for n in sizes:
            base = not args.no_baseline and str(n) in args.baseline_sizes.split(",")
            rows.append(one_size(n, cache, packages, args.jobs, base, Path(tmp)))
    first = rows[0]
    for r in rows:
        r["time_vs_one_ve"] = round(r["vzpkg_seconds"] / first["vzpkg_seconds"], 2)
        r["bytes_vs_one_ve"] = round(r["vzpkg_bytes"] / max(1, first["vzpkg_bytes"]), 3)
        if "baseline_seconds" in r:
            r["time_vs_baseline"] = round(r["vzpkg_seconds"] / r["baseline_seconds"], 3)
    load = os.getloadavg()
    out = write_results("mass_update", {"packages": packages, "jobs": args.jobs,
                                        "cache": cache[1], "rows": rows,
                                        "load_average_at_end": [round(x, 1) for x in load]})
    for r in rows:
        print(json.dumps(r))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
