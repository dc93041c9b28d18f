"""Freeze time of vzctl chkpnt/restore and vzmigrate, online against offline.

    python bench/migrate.py [--sizes 50,200,1024] [--no-migrate]

A busybox VE runs a small server (a static C program built here) that keeps
SIZE MB of memory touched and answers each line with a counter.  A client on the
host asks every 5 ms; the freeze time is the longest gap between two answers
while the VE moves: from its last answer at the source to its first answer at the
destination.  The host holds a second route to the VE's address, through the
second host, below the VE's own: once the VE's veth goes here the client reaches
the destination at once (what the VE's ARP announcement does on a real network),
instead of when the command has ended.  For each size:

- ``chkpnt+restore``: vzctl chkpnt, then vzctl restore on the same host;
- ``migrate --online``: to a second host (a VZ_ROOT in a network namespace of its
  own, with its own sshd, as in tests/integration/test_vzmigrate.py); the whole
  memory is dumped, copied and restored inside the freeze (the baseline of the next
  row); the same TCP connection carries on;
- ``migrate --online --lazy``: post-copy; the VE runs there once the dump without
  its memory is restored, the pages follow (``pages`` in its steps);
- ``migrate offline`` (the baseline): stop, copy, start there; the server starts
  again from the VE's /etc/rc.vz and the client connects again.

Also records what the kernel offers for shorter freezes: CRIU's memory change
tracking (pre-copy, ``--track-mem``/pre-dump) and userfaultfd (post-copy, lazy
pages).  Target (issue 15): online freeze < 1 s for 200 MB.  Needs root and a
working CRIU.  Writes bench/results/migrate.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.migrate_helpers import HOST_IP, PEER_IP, second_host  # noqa: E402
from tests.runtime_helpers import runtime_for  # noqa: E402

MODES = ("chkpnt+restore", "migrate --online", "migrate --online --lazy",
         "migrate offline")
CTID = 1590
IP = "10.215.0.90"
PORT = 7001
SERVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    size_t mb = strtoul(argv[1], 0, 10);
    char *mem = malloc(mb << 20);
    for (size_t i = 0; i < (mb << 20); i += 4096) mem[i] = (char)i | 1;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 4)) return 1;
    unsigned long n = 0;
    for (;;) {
        int c = accept(s, 0, 0);
        char buf[256], out[64];
        ssize_t r;
        while ((r = read(c, buf, sizeof buf)) > 0) {
            n++;
            int len = snprintf(out, sizeof out, "%lu %d\n", n, mem[(n * 4096) % (mb << 20)]);
            if (write(c, out, len) < 0) break;
        }
        close(c);
    }
}
"""


def vzctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "vzpkg.cli.vzctl", *args],
                          env={**os.environ, "VZ_ROOT": str(root)}, capture_output=True,
                          text=True, check=False, timeout=600)


class Prober(threading.Thread):
    """Asks every 5 ms; records when answers come; reconnects when the server is gone."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.ip = ip
        self.answers: list[float] = []
        self.stop = False
        self.reconnects = 0

    def run(self) -> None:
        sock: socket.socket | None = None
        while not self.stop:
            try:
                if sock is None:
                    sock = socket.create_connection((self.ip, PORT), timeout=30,
                                                    source_address=(HOST_IP, 0))
                    self.reconnects += 1
                sock.sendall(b"x\n")
                if not sock.recv(64):
                    raise OSError("closed")
                self.answers.append(time.monotonic())
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
                continue
            time.sleep(0.005)

    def gap(self, since: float, until: float) -> float:
        ts = [t for t in self.answers if since - 1 <= t <= until + 60]
        return max((b - a for a, b in itertools.pairwise(ts)), default=float("nan"))


def kernel_features(criu_argv: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for feat in ("mem_dirty_track", "uffd", "uffd-noncoop"):
        r = subprocess.run([*criu_argv, "check", "--feature", feat], capture_output=True,
                           text=True, check=False)
        out[feat] = {"ok": r.returncode == 0 and "supported" in r.stdout + r.stderr,
                     "says": (r.stdout + r.stderr).strip().splitlines()[-1:]}
    out["unprivileged_userfaultfd"] = Path("/proc/sys/vm/unprivileged_userfaultfd"
                                           ).read_text().strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,200,1024", help="MB of touched memory")
    ap.add_argument("--no-migrate", action="store_true", help="chkpnt+restore only")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"which runs, comma-separated (default: all: {', '.join(MODES)})")
    ap.add_argument("--runs", type=int, default=1, help="rounds of each (medians)")
    ap.add_argument("--diskspace", metavar="SIZE",
                    help="give the VE a disk limit (DISKSPACE, e.g. 4G): its files then "
                         "live in a disk image, which moves with it; each run alternates "
                         "with the same run without a limit (the baseline); the result "
                         "file is migrate-diskspace.json")
    args = ap.parse_args()
    from vzpkg.runtime import criu
    tool = criu.find()
    results: dict[str, Any] = {"criu": tool.version, "criu_from": tool.where,
                               "kernel": os.uname().release,
                               "features": kernel_features(tool.argv), "runs": []}
    with tempfile.TemporaryDirectory(prefix="vzbench-migrate-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        rt = runtime_for(base)
        root = rt.paths.root
        server = base / "server"
        subprocess.run(["gcc", "-static", "-O2", "-o", str(server), "-x", "c", "-"],
                       input=SERVER_C, text=True, check=True)
        with second_host(base, "vzbmig") as h2:
            wanted = [m for m in args.modes.split(",") if m]
            # with --diskspace, each run alternates with the same run without one
            disks = [args.diskspace, None] if args.diskspace else [None]
            for mb, _, mode, disk in itertools.product(
                    [int(x) for x in args.sizes.split(",")], range(args.runs), wanted,
                    disks):
                if args.no_migrate and mode != "chkpnt+restore":
                    continue
                try:
                    results["runs"].append(one(rt, root, h2, server, mb, mode, disk))
                except AssertionError as exc:   # recorded; the next run goes on
                    results["runs"].append({"mb": mb, "mode": mode, "diskspace": disk,
                                            "failed": str(exc)[-500:]})
                finally:
                    subprocess.run(h2.vzctl_argv("destroy", str(CTID), "--force"),
                                   capture_output=True, check=False)
                    vzctl(root, "destroy", str(CTID), "--force")
                print(json.dumps(results["runs"][-1]), flush=True)
    results["median_freeze_s"] = medians(results["runs"])
    results["diskspace"] = args.diskspace
    out = REPO / "bench" / "results" / ("migrate-diskspace.json" if args.diskspace
                                        else "migrate.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """``"MB mode"``: the median freeze of its runs that did not fail."""
    import statistics
    groups: dict[str, list[float]] = {}
    for r in runs:
        if "freeze_s" in r:
            disk = f" diskspace {r['diskspace']}" if r.get("diskspace") else ""
            groups.setdefault(f"{r['mb']} {r['mode']}{disk}", []).append(r["freeze_s"])
    return {k: round(statistics.median(v), 3) for k, v in groups.items()}


def one(rt: Any, root: Path, h2: Any, server: Path, mb: int, mode: str,
        diskspace: str | None = None) -> dict[str, Any]:
    import shutil
    vzctl(root, "destroy", str(CTID), "--force")
    subprocess.run(h2.vzctl_argv("destroy", str(CTID), "--force"), capture_output=True,
                   check=False)
    if diskspace:
        r = vzctl(root, "--cache-dir", str(rt.cache_dirs[0]), "create", str(CTID),
                  "--ostemplate", "busybox-1", "--ipadd", IP, "--diskspace", diskspace)
        assert r.returncode == 0, r.stderr
        vzctl(root, "mount", str(CTID))         # the image's files, for the copies below
    else:
        rt.create(CTID, "busybox-1", ipadd=[IP])
    r = vzctl(root, "set", str(CTID), "--ram", f"{mb + 512}M", "--swap", "0", "--save")
    assert r.returncode == 0, r.stderr
    priv = rt.paths.private(CTID)
    shutil.copy2(server, priv / "bin" / "vzbench-server")
    (priv / "etc" / "rc.vz").write_text(
        f"#!/bin/sh\n/bin/vzbench-server {mb} {PORT} </dev/null >/dev/null 2>&1 &\n")
    (priv / "etc" / "rc.vz").chmod(0o755)
    r = vzctl(root, "start", str(CTID))
    assert r.returncode == 0, r.stderr
    p = Prober(IP)
    p.start()
    deadline = time.monotonic() + 60
    while len(p.answers) < 20:
        assert time.monotonic() < deadline, "the server did not answer"
        time.sleep(0.05)
    t0 = time.monotonic()
    steps: dict[str, Any] = {}
    if mode == "chkpnt+restore":
        for what in ("chkpnt", "restore"):
            t = time.monotonic()
            r = vzctl(root, what, str(CTID))
            assert r.returncode == 0, r.stderr
            steps[what] = round(time.monotonic() - t, 3)
    else:
        flags = mode.split()[1:]
        subprocess.run(["ip", "route", "add", f"{IP}/32", "via", PEER_IP, "metric", "100"],
                       capture_output=True, check=False)
        r = subprocess.run([sys.executable, "-P", "-m", "vzpkg.cli.vzmigrate", "--json",
                            "--ssh", " ".join(h2.ssh_opts), "--remote-vzroot",
                            str(h2.vzroot), "--remote-vzctl", h2.vzctl,
                            *[f for f in flags if f != "offline"], h2.dest, str(CTID)],
                           env={**os.environ, "VZ_ROOT": str(root)}, capture_output=True,
                           text=True, check=False, timeout=1800)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        steps = {**rep["steps"], "frozen_by_vzmigrate": rep["frozen_seconds"]}
        h2.route_to(IP)
    t1 = time.monotonic()
    n = len([t for t in p.answers if t > t1])
    deadline = time.monotonic() + 60
    while len([t for t in p.answers if t > t1]) < n + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.stop = True
    p.join(5)
    freeze = p.gap(t0, t1)
    for _ in range(3):
        subprocess.run(["ip", "route", "del", f"{IP}/32"], capture_output=True, check=False)
    subprocess.run(h2.vzctl_argv("destroy", str(CTID), "--force"), capture_output=True,
                   check=False)
    vzctl(root, "destroy", str(CTID), "--force")
    return {"mb": mb, "mode": mode, "diskspace": diskspace, "freeze_s": round(freeze, 3),
            "command_s": round(t1 - t0, 3), "reconnects": p.reconnects - 1,
            "steps_s": steps}


if __name__ == "__main__":
    sys.exit(main())
