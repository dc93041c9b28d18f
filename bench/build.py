"""Benchmark: building debian-12-<arch>-minimal, against debootstrap and mmdebstrap.

In one run, alternating, N rounds (default 3):
  debootstrap --variant=minbase --include=<the minimal set>   into a directory
  mmdebstrap  --variant=minbase --include=<the minimal set>   to a plain .tar
  vzpkg build, cold  (empty package cache, fresh cache dir)
  vzpkg build, warm  (package cache filled, --force)
  vzpkg build, warm without the payload cache (VZPKG_PAYLOAD_CACHE=0)
  vzpkg build, no-op (up to date)
and the cache's size next to xz -9 and zstd -19 of the same tree; then one more
warm build with --verbose, timed step by step (vzpkg's and mmdebstrap's steps).
Medians and ratios go to bench/results/build.json.  Needs root and the mirror.

    python bench/build.py [--rounds N] [--backend debootstrap|mmdebstrap]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, timeit, write_results
from vzpkg.core.settings import load_settings
from vzpkg.template.loader import make_plan


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def phases(argv: list[str | Path]) -> dict[str, float]:
    """Run one build with --verbose and time its steps: vzpkg's own ("[  1.2s] name:
    step") and mmdebstrap's ("I: ..."), each until the next one begins."""
    marks: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - t0
            m = re.match(r"\[\s*[\d.]+s\] [^:]+: (.*)", line)
            if m:
                marks.append((now, m.group(1).split(":")[0].strip()))
            elif line.startswith("I: ") and not line.startswith("I: running --"):
                marks.append((now, "mmdebstrap: " + line[3:].strip().rstrip(".")))
    marks.append((time.monotonic() - t0, "end"))
    out: dict[str, float] = {}
    for (t, what), (t_next, _) in itertools.pairwise(marks):
        out[what] = round(out.get(what, 0.0) + t_next - t, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--name", default="debian-12")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vzpkg-bench-build-", dir="/var/tmp"))
    settings = load_settings(cache_dir=base / "probe")
    plan = make_plan(args.name, settings, backend=args.backend)
    repo = plan.repositories[0]
    assert repo.url and repo.suite
    include = "--include=" + ",".join(plan.packages)
    vzpkg = [sys.executable, "-m", "vzpkg.cli.vzpkg"]
    bflag = ["--backend", args.backend] if args.backend else []
    times: dict[str, list[float]] = {k: [] for k in
                                     ("debootstrap", "mmdebstrap_tar", "vzpkg_cold",
                                      "vzpkg_warm", "vzpkg_warm_no_payloads", "vzpkg_noop")}
    warm_dir = base / "warm"
    try:
        # fill the warm cache once, untimed
        sh(*vzpkg, "--cache-dir", warm_dir, "build", plan.name, *bflag)
        for i in range(args.rounds):
            d = base / f"deboot{i}"
            times["debootstrap"].append(timeit(partial(
                sh, "debootstrap", "--variant=minbase", include, f"--arch={plan.target_arch}",
                repo.suite, d, repo.url)))
            shutil.rmtree(d)
            t = base / f"mm{i}.tar"
            times["mmdebstrap_tar"].append(timeit(partial(
                sh, "mmdebstrap", "--variant=minbase", "--mode=root", include,
                f"--architectures={plan.target_arch}", repo.suite, t, repo.url)))
            t.unlink()
            cold = base / f"cold{i}"
            times["vzpkg_cold"].append(timeit(partial(
                sh, *vzpkg, "--cache-dir", cold, "build", plan.name, *bflag)))
            shutil.rmtree(cold)
            times["vzpkg_warm"].append(timeit(partial(
                sh, *vzpkg, "--cache-dir", warm_dir, "build", plan.name, "--force", *bflag)))
            times["vzpkg_warm_no_payloads"].append(timeit(partial(
                sh, *vzpkg, "--cache-dir", warm_dir, "build", plan.name, "--force", *bflag,
                env={"VZPKG_PAYLOAD_CACHE": "0"})))
            times["vzpkg_noop"].append(timeit(partial(
                sh, *vzpkg, "--cache-dir", warm_dir, "build", plan.name, *bflag)))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  flush=True)
        warm_phases = phases([*vzpkg, "--cache-dir", warm_dir, "build", plan.name,
                              "--force", "--verbose", *bflag])
        print("warm build, by step: " + ", ".join(f"{k} {v:.1f}s"
                                                  for k, v in warm_phases.items()), flush=True)
        tarball = warm_dir / f"{plan.name}.tar.zst"
        tree = base / "tree"
        tree.mkdir()
        sh("tar", "--zstd", "-xpf", tarball, "-C", tree)
        plain = base / "plain.tar"
        sh("tar", "--sort=name", "-cf", plain, "-C", tree, ".")
        sh("xz", "-9", "-T0", "-k", plain)
        sh("zstd", "-19", "-T0", "-q", plain)
        sizes = {"vzpkg_tar_zst": tarball.stat().st_size,
                 "xz_9": Path(f"{plain}.xz").stat().st_size,
                 "zstd_19": Path(f"{plain}.zst").stat().st_size,
                 "plain_tar": plain.stat().st_size,
                 "package_cache_debs": sum(f.stat().st_size for f in
                                           (warm_dir / ".pkgcache").rglob("*.deb")),
                 "payload_cache": du(warm_dir / ".pkgcache" / ".payloads")}
        med = {k: median(v) for k, v in times.items()}
        ratios = {"cold_vs_mmdebstrap_tar": med["vzpkg_cold"] / med["mmdebstrap_tar"],
                  "warm_vs_mmdebstrap_tar": med["vzpkg_warm"] / med["mmdebstrap_tar"],
                  "warm_no_payloads_vs_mmdebstrap_tar":
                      med["vzpkg_warm_no_payloads"] / med["mmdebstrap_tar"],
                  "cold_vs_debootstrap": med["vzpkg_cold"] / med["debootstrap"]}
        out = write_results("build", {"cache": plan.name, "backend": plan.backend,
                                      "rounds": args.rounds, "seconds": times,
                                      "median_seconds": med, "ratios": ratios,
                                      "sizes_bytes": sizes,
                                      "warm_steps_seconds": warm_phases,
                                      "targets": {"cold_vs_mmdebstrap_tar": "<= 1.0",
                                                  "warm_vs_mmdebstrap_tar": "<= 0.6",
                                                  "noop_seconds": "< 3"}})
        print(json.dumps({"median_seconds": med, "ratios": ratios, "sizes": sizes},
                         indent=2))
        print(f"written to {out}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
