"""Benchmark: building the tests' RPM distribution with vzpkg, cold and warm,
next to a bare ``dnf --installroot install`` of the same packages, all in the
same run against the same repository served on 127.0.0.1.

* bare dnf: a fresh root and a fresh dnf cache each run; the same signature
  checks (gpgcheck and repo_gpgcheck with the distribution key), no weak deps.
* cold: ``vzpkg build --force`` with an empty package cache (every package and
  all metadata downloaded), then scripts, finalize, packing, store.
* warm: ``vzpkg build --force`` with the package cache of an earlier build.

When the build pipeline (vzpkg.build) is not present, the backend alone is
measured instead (repo_state + bootstrap + clean) and the result says so.

Targets (issue 4): cold within 1.3x of bare dnf; warm faster than bare dnf.
Needs root.  Usage: python bench/build_rpm.py [--runs N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import median, timeit, write_results  # noqa: E402
from tests.rpm_helpers import RepoServer, dnf_context  # noqa: E402
from tests.rpmrepo.builder import (  # noqa: E402
    Distribution,
    build_distribution,
    write_workspace,
)
from vzpkg.backends import get_backend  # noqa: E402
from vzpkg.config import load_settings  # noqa: E402
from vzpkg.metadata.loader import make_plan  # noqa: E402

PLAN = "vztest-1-x86_64-minimal"
PACKAGES = ("vztest-setup", "vztest-busybox", "vztest-release", "vztest-hello", "vztest-a")


def bare_dnf(dist: Distribution, url: str, tmp: Path) -> Callable[[], None]:
    """One bare ``dnf --installroot install`` into a fresh root."""
    key = tmp / "key.asc"
    key.write_text(dist.key.armored)
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    conf = tmp / "dnf.conf"
    conf.write_text(f"[main]\ngpgcheck=1\ninstall_weak_deps=0\nplugins=0\n"
                    f"[vztest]\nname=vztest\nbaseurl={url}\ngpgcheck=1\n"
                    f"repo_gpgcheck=1\ngpgkey={key.as_uri()}\n")
    counter = iter(range(1_000_000))

    def run() -> None:
        root = tmp / f"bare-{next(counter)}"
        subprocess.run(["dnf", "-y", "-q", f"--config={conf}", f"--installroot={root}",
                        "--releasever=1", f"--setopt=reposdir={tmp / 'none'}",
                        "install", *PACKAGES], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL,
                       env={"PATH": os.environ["PATH"], "HOME": str(home)})
        shutil.rmtree(root)
    return run


def vzpkg_cli(workspace: Path, cache_dir: Path) -> Callable[[], None]:
    def run() -> None:
        subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace",
                        str(workspace), "--cache-dir", str(cache_dir), "build", "--force",
                        PLAN], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return run


def vzpkg_backend(workspace: Path, cache_dir: Path) -> Callable[[], None]:
    """repo_state + bootstrap + clean, what the dnf backend does in a build."""
    counter = iter(range(1_000_000))

    def run() -> None:
        settings = load_settings(workspace=workspace, cache_dir=cache_dir)
        plan = make_plan(PLAN, settings)
        tmp = cache_dir / ".work" / f"b{next(counter)}"
        backend = get_backend("dnf")(dnf_context(plan, tmp,
                                                 pkg_cache=settings.pkg_cache_dir))
        backend.repo_state()
        backend.bootstrap(tmp / "root")
        backend.clean(tmp / "root")
        shutil.rmtree(tmp)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per variant (default 3)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("build_rpm: needs root (namespaces, mounts)", file=sys.stderr)
        return 1
    pipeline = importlib.util.find_spec("vzpkg.build") is not None
    make = vzpkg_cli if pipeline else vzpkg_backend
    with tempfile.TemporaryDirectory(prefix="vzpkg-bench-rpm-") as t:
        tmp = Path(t)
        dist = build_distribution(tmp / "dist")
        with RepoServer(dist.root) as server:
            url = f"{server.url}/good/"
            ws = write_workspace(tmp / "ws", dist.key, url)
            bare, cold, warm = [], [], []
            warm_cache = tmp / "warm-caches"
            make(ws, warm_cache)()                          # fill the package cache
            for i in range(args.runs):                       # interleaved
                (tmp / f"bare{i}").mkdir()
                bare.append(timeit(bare_dnf(dist, url, tmp / f"bare{i}")))
                cold.append(timeit(make(ws, tmp / f"cold-caches-{i}")))
                warm.append(timeit(make(ws, warm_cache)))
    res = {
        "mode": "vzpkg build (CLI, full pipeline)" if pipeline
                else "dnf backend only: repo_state + bootstrap + clean (pipeline absent)",
        "runs": args.runs,
        "packages": len(PACKAGES),
        "bare_dnf_s": {"runs": bare, "median": median(bare)},
        "cold_s": {"runs": cold, "median": median(cold)},
        "warm_s": {"runs": warm, "median": median(warm)},
        "cold_vs_bare": median(cold) / median(bare),
        "warm_vs_bare": median(warm) / median(bare),
        "targets": {"cold_vs_bare_max": 1.3, "warm_vs_bare_max": 1.0},
    }
    out = write_results("build_rpm", res)
    print(f"{res['mode']}\n"
          f"bare dnf  median {median(bare):.2f}s\n"
          f"cold      median {median(cold):.2f}s  ({res['cold_vs_bare']:.2f}x bare)\n"
          f"warm      median {median(warm):.2f}s  ({res['warm_vs_bare']:.2f}x bare)\n"
          f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
