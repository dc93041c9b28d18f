"""Pack and unpack a ~200 MB rootfs tree with vzpkg.archive and with GNU tar +
zstd, alternating, in the same run; report medians and ratios.

    python bench/archive.py [--tree DIR] [--runs N] [--workdir DIR] [--size-mb N]

Without --tree a realistic tree is generated (many small text-like files, some
binaries, a few large files, symlinks, hard links).  Targets: unpack within
1.2x of ``zstd -dc | tar -x``, pack within 1.2x of
``tar --sort=name ... | zstd -T0`` at the same level.  Both sides do the same
work: pax format, numeric owners, clamped mtimes, xattrs, zstd level 3 on every
core.  Writes bench/results/archive.json.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, timeit, write_results
from vzpkg.archive import pack, scan, tool_versions, unpack

SOURCE_DATE = 1_700_000_000
LEVEL = 3
TARGET = 1.2
WORDS = ('the', 'of', 'and', 'to', 'in', 'is', 'for', 'on', 'that', 'with', 'as', 'by',
         'this', 'be', 'are', 'from', 'at', 'or', 'an', 'it', 'not', 'config', 'value',
         'path', 'file', 'user', 'root', 'system', 'service', 'network', 'package', 'install',
         'return', 'static', 'const', 'struct', 'void', 'int', 'char', 'unsigned', 'size_t',
         'include', 'define', 'debian', 'linux', 'kernel', 'module', 'option', 'default',
         'enable', 'disable', 'error', 'warning')


def generate(root: Path, size_mb: int, seed: int = 7) -> None:
    """A tree shaped like a Debian 12 rootfs.  File sizes follow a log-normal
    law fitted to a real one (mmdebstrap minbase: median 2.5 KB, 90th percentile
    44 KB, 99th 336 KB, mean 25 KB): median 2.3 KB, p90 35 KB, p99 320 KB; about
    one directory per 8 files, one symlink per 6, some hard links."""
    rng = random.Random(seed)
    budget = size_mb << 20
    root.mkdir(parents=True)
    tops = ("usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/share/doc",
            "usr/share/man/man1", "usr/share/locale", "etc", "var/lib/dpkg/info",
            "usr/lib/python3/dist-packages", "usr/share/perl5", "usr/include")
    dirs = [Path(p) for p in tops]
    for i in range(max(budget // (200 << 10), 10)):             # ~1 directory per 200 KB
        top = rng.choice(tops[3:])
        dirs.append(Path(top) / f"pkg{i:04d}" / rng.choice(("", "sub", "data/x")))
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    binary_seed = os.urandom(1 << 16)
    made: list[Path] = []
    written, n = 0, 0
    while written < budget:
        size = min(int(rng.lognormvariate(7.74, 2.12)), 8 << 20)
        kind = rng.choice(("text", "text", "text", "bin"))
        d = rng.choice(dirs)
        p = root / d / f"f{n:06d}.{'so' if kind == 'bin' else 'txt'}"
        if kind == "text":
            words = rng.choices(WORDS, k=size // 6 + 1)
            data = " ".join(words).encode()[:size]
        else:   # half random, half repeated: compresses about 2:1 like real binaries
            chunks: list[bytes] = []
            have = 0
            while have < size:
                off = rng.randrange(0, len(binary_seed) - 4096)
                chunks.append(binary_seed[off:off + 4096] if rng.random() < 0.5
                              else os.urandom(2048))
                have += len(chunks[-1])
            data = b"".join(chunks)[:size]
        p.write_bytes(data)
        p.chmod(0o755 if kind == "bin" and d.name.endswith("bin") else 0o644)
        made.append(p)
        written += len(data)
        n += 1
    for i, p in enumerate(rng.sample(made, len(made) // 6)):      # symlinks
        link = root / rng.choice(dirs) / f"l{i:05d}"
        link.symlink_to(os.path.relpath(p, link.parent))
    for i, p in enumerate(rng.sample(made, min(40, len(made)))):   # hard links
        os.link(p, root / "usr/bin" / f"hl{i:03d}")


def _gnu_pack(tree: Path, out: Path) -> None:
    tar = subprocess.Popen(
        ["tar", "-C", str(tree), "--sort=name", "--format=posix",
         "--pax-option=delete=atime,delete=ctime", "--numeric-owner", "--clamp-mtime",
         f"--mtime=@{SOURCE_DATE}", "--xattrs", "--xattrs-include=*", "-cf", "-", "."],
        stdout=subprocess.PIPE)
    subprocess.run(["zstd", "-q", "-T0", f"-{LEVEL}", "-f", "-o", str(out)], stdin=tar.stdout,
                   check=True)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0:
        raise SystemExit("GNU tar failed")


def _gnu_unpack(archive: Path, dest: Path) -> None:
    dest.mkdir()
    z = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-C", str(dest), "--xattrs", "--xattrs-include=*",
                    "--numeric-owner", "-xpf", "-"], stdin=z.stdout, check=True,
                   stderr=subprocess.DEVNULL)     # GNU tar warns about LIBARCHIVE.xattr keys
    assert z.stdout is not None
    z.stdout.close()
    if z.wait() != 0:
        raise SystemExit("zstd -d failed")


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def _fs_type(p: Path) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", str(p)], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "unknown"


def _measure(fn: Callable[[], object], children: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of fn; CPU of child processes for
    the GNU pipelines, of this process (all its threads) for vzpkg."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    r0 = resource.getrusage(who)
    wall = timeit(fn)
    r1 = resource.getrusage(who)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run(tree: Path, work: Path, runs: int) -> dict[str, Any]:
    ours, gnu = work / "vzpkg.tar.zst", work / "gnu.tar.zst"
    names = ("pack_vzpkg", "pack_gnu", "unpack_vzpkg", "unpack_gnu", "scan_vzpkg")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    pack(tree, ours, source_date=SOURCE_DATE, level=LEVEL)          # warm the page cache
    _gnu_pack(tree, gnu)
    for i in range(runs):
        steps: list[tuple[str, Callable[[], object]]] = [
            ("pack_vzpkg", lambda: pack(tree, ours, source_date=SOURCE_DATE, level=LEVEL)),
            ("pack_gnu", lambda: _gnu_pack(tree, gnu))]
        if i % 2:
            steps.reverse()
        unpacks: list[tuple[str, Callable[[], object]]] = [
            ("unpack_vzpkg", lambda: unpack(ours, work / "ve")),
            ("unpack_gnu", lambda: _gnu_unpack(ours, work / "ve"))]
        steps += unpacks[::-1] if i % 2 else unpacks
        steps.append(("scan_vzpkg", lambda: scan(ours)))
        for name, fn in steps:
            w, c = _measure(fn, children=name.endswith("gnu"))
            wall[name].append(w)
            cpu[name].append(c)
            _clear(work / "ve")
        print(f"run {i + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in wall.items()),
              flush=True)
    med = {k: round(median(v), 3) for k, v in wall.items()}
    med_cpu = {k: round(median(v), 3) for k, v in cpu.items()}
    info = scan(ours)
    ratios = {"pack": round(med["pack_vzpkg"] / med["pack_gnu"], 3),
              "unpack": round(med["unpack_vzpkg"] / med["unpack_gnu"], 3)}
    cpu_ratios = {"pack": round(med_cpu["pack_vzpkg"] / med_cpu["pack_gnu"], 3),
                  "unpack": round(med_cpu["unpack_vzpkg"] / med_cpu["unpack_gnu"], 3)}
    best = {k: round(min(v), 3) for k, v in wall.items()}     # the least disturbed run
    best_ratios = {"pack": round(best["pack_vzpkg"] / best["pack_gnu"], 3),
                   "unpack": round(best["unpack_vzpkg"] / best["unpack_gnu"], 3)}
    return {
        "tree": {"entries": info.file_count, "bytes": info.unpacked_size},
        "workdir_fs": _fs_type(work), "runs": runs, "level": LEVEL,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "sizes": {"vzpkg": ours.stat().st_size, "gnu": gnu.stat().st_size},
        "seconds": {k: [round(x, 3) for x in v] for k, v in wall.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "median_seconds": med, "median_cpu_seconds": med_cpu,
        "ratio_vzpkg_over_gnu": ratios, "cpu_ratio_vzpkg_over_gnu": cpu_ratios,
        "min_seconds": best, "min_ratio_vzpkg_over_gnu": best_ratios,
        "target_ratio": TARGET,
        "within_target": {k: v <= TARGET for k, v in ratios.items()},
        "baseline": {
            "pack": "tar --sort=name --format=posix --numeric-owner --clamp-mtime --xattrs "
                    "-cf - . | zstd -T0 -3",
            "unpack": "zstd -dc | tar --xattrs --numeric-owner -xpf -"},
        "versions": {"libarchive": tool_versions(),
                     "tar": subprocess.run(["tar", "--version"], capture_output=True,
                                           text=True, check=False).stdout.splitlines()[0]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, help="an existing rootfs tree (e.g. a Debian one)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=200, help="size of a generated tree")
    ap.add_argument("--workdir", type=Path,
                    help="where archives and unpacked trees go (default: a temp dir on "
                         "/dev/shm when it has room, else the system temp dir)")
    args = ap.parse_args()
    for tool in ("tar", "zstd"):
        if not shutil.which(tool):
            raise SystemExit(f"bench/archive.py needs {tool}")
    base = args.workdir
    if base is None and Path("/dev/shm").is_dir() and \
            shutil.disk_usage("/dev/shm").free > 8 * (args.size_mb << 20):
        base = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="vzpkg-bench-archive-", dir=base))
    try:
        tree = args.tree
        if tree is None:
            tree = work / "tree"
            generate(tree, args.size_mb)
        result = run(tree, work, max(args.runs, 1))
        result["tree"]["source"] = str(args.tree) if args.tree else \
            f"generated ({args.size_mb} MB)"
    finally:
        shutil.rmtree(work)
    out = write_results("archive", result)
    med, ratio = result["median_seconds"], result["ratio_vzpkg_over_gnu"]
    cpu, cratio = result["median_cpu_seconds"], result["cpu_ratio_vzpkg_over_gnu"]
    print(f"tree: {result['tree']}")
    for op in ("pack", "unpack"):
        print(f"{op:6} vzpkg {med[op + '_vzpkg']:.2f}s  gnu {med[op + '_gnu']:.2f}s  "
              f"ratio {ratio[op]:.2f} (target <= {TARGET});  CPU vzpkg "
              f"{cpu[op + '_vzpkg']:.2f}s  gnu {cpu[op + '_gnu']:.2f}s  ratio {cratio[op]:.2f}")
    print(f"scan   vzpkg {med['scan_vzpkg']:.2f}s;  results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
