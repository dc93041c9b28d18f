"""The seed's density experiment: how a VE's first response holds up as VEs are added.

    python bench/density.py [--counts 1,10,50,100,200,300,400,500] [--workdir DIR]
                            [--min-free-gib 2] [--sample 100]

Builds, in a workspace of its own, a Debian 12 set ``web`` that extends the shipped
``default`` set (systemd, sshd, cron) with a syslog daemon (rsyslog) and a web server
(lighttpd).  Then, for each N in --counts, it brings the number of running VEs (overlay
layout, one cache, each with its own address) up to N, waits until every new VE's
systemd reports running or degraded, and measures from the host the first-response
time of an HTTP GET to each VE (a fresh connection; at most --sample VEs, spread
evenly) and the host memory per VE, two ways: the median of what each VE's memory cgroup is
charged (its processes' pages, page cache and kernel memory: the figure other work on
the machine cannot disturb), and MemAvailable before the first VE against now divided
by N (everything, including what the kernel holds outside the cgroups, but disturbed
by anything else running).
It stops adding VEs when MemAvailable would fall below --min-free-gib.

Targets (issue 13): 500 such VEs on a 24 GiB host, a median first response under
50 ms at the largest N.  Writes bench/results/density.json and density.png (median and
90th percentile first response against N).  Needs root and the Debian mirror.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, median, write_results
from bench.plot import line_chart
from vzpkg.core.settings import SHIPPED_METADATA
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

NAME = "debian-12-x86_64-web"
BASE = 20000


def ip_of(i: int) -> str:
    return f"198.19.{i // 200}.{i % 200 + 10}"


def workspace(work: Path) -> Path:
    ws = work / "ws"
    (ws / "metadata").mkdir(parents=True)
    shutil.copytree(SHIPPED_METADATA / "keys", ws / "metadata" / "keys")
    data = yaml.safe_load((SHIPPED_METADATA / "debian.yaml").read_text())
    data["sets"]["web"] = {"description": "default plus syslog and a web server",
                           "extends": "default", "packages": ["rsyslog", "lighttpd"]}
    (ws / "metadata" / "debian.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (ws / "vzpkg.yaml").write_text("cache_dir: caches\n")
    return ws


def mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def first_response(ip: str, timeout: float = 10.0) -> float:
    """Seconds from connect to the first byte of the answer to GET /."""
    t0 = time.perf_counter()
    with socket.create_connection((ip, 80), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: ve\r\n\r\n")
        if not s.recv(1):
            raise OSError(f"{ip}: closed without an answer")
    return time.perf_counter() - t0


def charged_mib(rt: Runtime, ctids: list[int]) -> float:
    """Median MiB charged to the VEs' memory cgroups (physpages held)."""
    per = []
    for c in ctids:
        pages = next((b.held for b in rt.cgroups.counters(str(c))
                      if b.resource == "physpages"), None)
        if pages is not None:
            per.append(pages * 4096 / (1 << 20))
    return round(median(per), 1) if per else 0.0


def wait_http(ip: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            first_response(ip, 2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1,10,50,100,200,300,400,500")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--min-free-gib", type=float, default=2.0)
    ap.add_argument("--sample", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/density.py needs root", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vzdensity-", dir=args.workdir))
    rt: Runtime | None = None
    rows: list[dict[str, Any]] = []
    stopped_because = "reached the largest count"
    try:
        ws = workspace(work)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws),
                        "build", NAME], check=True)
        print(f"built {NAME} in {time.perf_counter() - t0:.0f} s", flush=True)
        rt = Runtime(VzPaths(work / "vz"), [ws / "caches"])
        base_free = mem_available()
        running: list[int] = []
        for n in counts:
            new: list[int] = []
            t_start = time.perf_counter()
            while len(running) + len(new) < n:
                i = len(running) + len(new)
                per_ve = ((base_free - mem_available()) / len(running)) if running else 0
                if mem_available() - per_ve < args.min_free_gib * (1 << 30):
                    stopped_because = f"MemAvailable below {args.min_free_gib} GiB"
                    break
                ctid = BASE + i
                rt.create(ctid, NAME, layout_name="overlay", ipadd=[ip_of(i)],
                          hostname=f"ve{i}")
                rt.start(ctid)
                new.append(ctid)
            for ctid in new:
                rt.wait_booted(ctid, timeout=600)
                wait_http(ip_of(ctid - BASE))
            booted_s = time.perf_counter() - t_start
            running += new
            if not new and len(running) < n:
                break
            time.sleep(2)                    # idle: what is left of the boots settles
            step = max(1, len(running) // args.sample)
            times = [first_response(ip_of(c - BASE)) for c in running[::step]]
            used = base_free - mem_available()
            row = {"ves": len(running), "started_and_booted_s": round(booted_s, 1),
                   "first_response_median_ms": round(median(times) * 1000, 2),
                   "first_response_p90_ms": round(percentile(times, 90) * 1000, 2),
                   "sampled": len(times),
                   "charged_memory_per_ve_mib": charged_mib(rt, running),
                   "host_memory_per_ve_mib": round(used / len(running) / (1 << 20), 1),
                   "load_average_1min": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(row, flush=True)
            if stopped_because != "reached the largest count":
                break
        largest = rows[-1] if rows else {}
        res = {"cache": NAME, "rows": rows, "stopped_because": stopped_because,
               "ves_reached": largest.get("ves", 0),
               "target_500_met": largest.get("ves", 0) >= 500,
               "median_under_50ms_at_largest": largest.get("first_response_median_ms",
                                                           1e9) < 50}
        out = write_results("density", res)
        line_chart(RESULTS / "density.png", [r["ves"] for r in rows],
                   [[r["first_response_median_ms"] for r in rows],
                    [r["first_response_p90_ms"] for r in rows]])
        print(f"wrote {out} and {RESULTS / 'density.png'}")
    finally:
        if rt is not None:
            for c in rt.ctids():
                with contextlib.suppress(Exception):
                    rt.stop(c, fast=True)
                try:
                    rt.destroy(c)
                except Exception as exc:
                    print(f"cleanup of VE {c} failed: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
