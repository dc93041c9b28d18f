"""Benchmark: ``vzpkg build`` of the tests' RPM distribution, cold and warm, next
to a bare ``dnf --installroot install`` of the same packages, all in the same
run against the same signed repository served on 127.0.0.1.

Per round, in this order (interleaved, so load drifts hit every variant alike):

* bare dnf: a fresh root and a fresh dnf cache; the same checks vzpkg asks for
  (gpgcheck and repo_gpgcheck with the distribution key, no weak deps);
* cli cold: ``python -m vzpkg.cli.vzpkg build --force`` in a new process, as a
  user runs it (byte code cached, as for an installed package), with an empty
  cache dir (all metadata and packages downloaded); the template is unchanged
  since an earlier run, so its plan comes from the plan cache, as for a user
  building a template again;
* cli warm: the same with the package cache of an earlier build;
* api cold / api warm: ``vzpkg.build.pipeline.build(plan, settings, force=True)`` in this
  process (no interpreter start-up or imports), same two cache states.

Every vzpkg variant is the whole pipeline: repository check, keyring,
bootstrap, post-install script in the build VE, clean, finalize, manifest,
reproducible packing and the store commit.  For the API runs the time of each
pipeline step (from the progress messages) is recorded too.

Targets (issue 4): cold within 1.3x of bare dnf; warm faster than bare dnf.
Needs root.  Usage: python bench/build_rpm.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import median, timeit, write_results  # noqa: E402
from tests.rpm_helpers import RepoServer  # noqa: E402
from tests.rpmrepo.builder import (  # noqa: E402
    Distribution,
    build_distribution,
    write_workspace,
)
from vzpkg.build.pipeline import build  # noqa: E402
from vzpkg.core.settings import load_settings  # noqa: E402
from vzpkg.template.loader import make_plan  # noqa: E402

PLAN = "vztest-1-x86_64-minimal"
VARIANTS = ("bare_dnf", "cli_cold", "cli_warm", "api_cold", "api_warm")


def bare_dnf(dist: Distribution, url: str, tmp: Path, packages: tuple[str, ...]
             ) -> Callable[[], None]:
    """One bare ``dnf --installroot install`` into a fresh root and dnf cache."""
    tmp.mkdir(parents=True, exist_ok=True)
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
                        "install", *packages], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL,
                       env={"PATH": os.environ["PATH"], "HOME": str(home)})
        shutil.rmtree(root)
    return run


def cli_env() -> dict[str, str]:
    """The environment of the CLI runs: this one without PYTHONDONTWRITEBYTECODE,
    so vzpkg's modules load from byte code as from an installed package (the
    source would otherwise be compiled anew in every run)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def vzpkg_cli(workspace: Path, cache_dir: Path) -> Callable[[], None]:
    def run() -> None:
        subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace",
                        str(workspace), "--cache-dir", str(cache_dir), "build", "--force",
                        PLAN], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=ROOT, env=cli_env())
    return run


class ApiRun:
    """vzpkg.build.pipeline.build in this process; records the time of each step."""

    def __init__(self, workspace: Path, cache_dir: Path) -> None:
        self.workspace = workspace
        self.cache_dir = cache_dir
        self.steps: dict[str, float] = {}

    def __call__(self) -> None:
        t0 = last = time.perf_counter()
        prev = "plan"
        steps: dict[str, float] = {}

        def progress(_name: str, msg: str) -> None:
            nonlocal last, prev
            now = time.perf_counter()
            key = prev.split(":")[0]
            steps[key] = steps.get(key, 0.0) + now - last
            last, prev = now, msg

        settings = load_settings(workspace=self.workspace, cache_dir=self.cache_dir)
        plan = make_plan(PLAN, settings)
        build(plan, settings, force=True, progress=progress)
        key = prev.split(":")[0]
        steps[key] = steps.get(key, 0.0) + time.perf_counter() - last
        steps["total"] = time.perf_counter() - t0
        self.steps = steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--label", default="", help="a note stored with the results")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("build_rpm: needs root (namespaces, mounts)", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    step_runs: dict[str, list[dict[str, float]]] = {"api_cold": [], "api_warm": []}
    with tempfile.TemporaryDirectory(prefix="vzpkg-bench-rpm-", dir="/var/tmp") as t:
        tmp = Path(t)
        dist = build_distribution(tmp / "dist")
        with RepoServer(dist.root) as server:
            url = f"{server.url}/good/"
            ws = write_workspace(tmp / "ws", dist.key, url)
            plan = make_plan(PLAN, load_settings(workspace=ws, cache_dir=tmp / "probe"))
            packages = plan.packages
            warm = tmp / "warm-caches"
            # fill the package cache (and write .pyc); a plan is kept only once its
            # template is two seconds old (see vzpkg.template.plancache)
            time.sleep(2.1)
            vzpkg_cli(ws, warm)()
            api_warm = ApiRun(ws, warm)
            for i in range(args.runs):
                times["bare_dnf"].append(timeit(bare_dnf(dist, url, tmp / f"bare{i}",
                                                         packages)))
                cold = tmp / f"cli-cold-{i}"
                times["cli_cold"].append(timeit(vzpkg_cli(ws, cold)))
                shutil.rmtree(cold)
                times["cli_warm"].append(timeit(vzpkg_cli(ws, warm)))
                api_cold = ApiRun(ws, tmp / f"api-cold-{i}")
                times["api_cold"].append(timeit(api_cold))
                step_runs["api_cold"].append(api_cold.steps)
                shutil.rmtree(api_cold.cache_dir)
                times["api_warm"].append(timeit(api_warm))
                step_runs["api_warm"].append(api_warm.steps)
                print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s"
                                                     for k, v in times.items()), flush=True)
    med = {k: median(v) for k, v in times.items()}
    steps = {k: {s: median([r.get(s, 0.0) for r in runs])
                 for s in sorted({s for r in runs for s in r})}
             for k, runs in step_runs.items()}
    ratios = {f"{k}_vs_bare": med[k] / med["bare_dnf"] for k in VARIANTS[1:]}
    res = {
        "mode": "vzpkg build, full pipeline (CLI in a new process, and the API)",
        "label": args.label, "runs": args.runs, "packages": list(packages),
        "load_average_1m_at_end": os.getloadavg()[0],
        "seconds": times, "median_seconds": med, "ratios": ratios,
        "api_step_median_seconds": steps,
        "targets": {"cold_vs_bare_max": 1.3, "warm_vs_bare_max": 1.0},
    }
    out = write_results("build_rpm", res)
    print(f"{'variant':10} {'median':>8} {'vs bare':>8}")
    for k in VARIANTS:
        print(f"{k:10} {med[k]:7.2f}s {med[k] / med['bare_dnf']:7.2f}x")
    for k, s in steps.items():
        print(f"{k} steps: " + ", ".join(f"{n} {v:.2f}" for n, v in s.items()))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
