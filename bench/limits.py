"""Time to change a limit on a running VE, against the bare cgroup write, in one run.

    python bench/limits.py [--runs N]

A busybox VE runs; each round changes its RAM limit (alternating two values so that
every round really changes it) and measures, with medians over --runs rounds:

- ``vzctl set CTID --ram SIZE`` as an administrator runs it (a new process: parse,
  lock, check, write the cgroup, record CTID.live);
- the same change through the Python API (``vset.apply``), in this process;
- the baseline: a shell writing the new limit to the cgroup file itself
  (``sh -c 'echo N > memory.limit_in_bytes'``, or memory.max on cgroup v2);
- the floor of any vzctl command: ``vzctl status CTID`` (interpreter start, imports,
  the VE's state; no change);
- ``vzubc CTID`` (all 21 beancounters of one VE), against ``cat`` of its memory
  usage file.

Needs root.  Writes bench/results/limits.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, write_results
from tests.runtime_helpers import runtime_for
from vzpkg.runtime import vset
from vzpkg.runtime.cgroups import CgroupsV1, CgroupsV2

CTID = 8901


def _ms(x: float) -> float:
    return round(x * 1000, 2)


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/limits.py needs root", file=sys.stderr)
        return 1
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="vzbench-limits-") as tmp:
        rt = runtime_for(Path(tmp))
        env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        rt.create(CTID, "busybox-1")
        rt.start(CTID)
        try:
            cg = rt.cgroups
            if isinstance(cg, CgroupsV1):
                group = cg.group("memory", str(CTID))
                assert group is not None
                limit_file, usage_file = group / "memory.limit_in_bytes", \
                    group / "memory.usage_in_bytes"
            else:
                assert isinstance(cg, CgroupsV2)
                limit_file, usage_file = cg.group(str(CTID)) / "memory.max", \
                    cg.group(str(CTID)) / "memory.current"
            cli, api, bare, ubc, cat, status = [], [], [], [], [], []
            for i in range(args.runs):
                size = ("256M", "384M")[i % 2]
                cli.append(_timed([str(bindir / "vzctl"), "set", str(CTID), "--ram", size],
                                  env))
                assert limit_file.read_text().strip() == str(int(size[:-1]) << 20)
                other = ("384M", "256M")[i % 2]
                t = time.perf_counter()
                vset.apply(rt, CTID, {"PHYSPAGES": f"0:{int(other[:-1]) * 256}"})
                api.append(time.perf_counter() - t)
                n = int(size[:-1]) << 20
                bare.append(_timed(["sh", "-c", f"echo {n} > {limit_file}"], env))
                ubc.append(_timed([str(bindir / "vzubc"), str(CTID)], env))
                cat.append(_timed(["cat", str(usage_file)], env))
                status.append(_timed([str(bindir / "vzctl"), "status", str(CTID)], env))
        finally:
            rt.stop(CTID, fast=True)
            rt.destroy(CTID)
    res: dict[str, Any] = {
        "runs": args.runs, "cgroup_version": cg.version,
        "set_cli_ms": _ms(median(cli)), "set_api_ms": _ms(median(api)),
        "bare_cgroup_write_ms": _ms(median(bare)),
        "set_cli_vs_bare": round(median(cli) / median(bare), 2),
        "vzctl_status_ms": _ms(median(status)),
        "set_cli_minus_status_ms": _ms(median(cli) - median(status)),
        "vzubc_ms": _ms(median(ubc)), "cat_usage_ms": _ms(median(cat)),
        "vzubc_vs_cat": round(median(ubc) / median(cat), 2),
    }
    for k, v in res.items():
        print(f"{k:>24}: {v}")
    print(f"wrote {write_results('limits', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
