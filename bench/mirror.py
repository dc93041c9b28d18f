"""Benchmark: pulling a ~40 MB cache over loopback, against curl of the same file.

In one run, alternating, N rounds (default 7), from one HTTP server on 127.0.0.1
(tests/mirror_helpers.MirrorServer: HTTP/1.1, sendfile):
  curl -o FILE URL                        the tarball alone, no checks (the target's
                                          baseline)
  curl + sync --data FILE                 the same made durable, as a pull must be
  write + fdatasync from memory           the disk's floor for a durable 40 MB: the
                                          same bytes, no network, no checks
  curl + sha256sum + gpg --verify         the same with the checks done by hand
  Puller.pull (in-process)                index + its signature (sqv), manifest,
                                          tarball with sha256 and the detached
                                          signature checked while it downloads (sqv
                                          reading a pipe), flushed to disk behind
                                          the writer, atomic commit to a fresh cache
                                          directory
  the same, signatures checked by gpg     (the fallback without sqv)
  vzpkg pull (a new process)              the same from the command line, with the
                                          Python start-up (its modules byte-compiled
                                          first, as an installed package has them)
  python -c pass                          the interpreter's own start-up (the floor of
                                          any command line: pull_api + this)
The order of the methods rotates from round to round.  Medians and ratios
against curl go to bench/results/mirror.json.

    python bench/mirror.py [--rounds N] [--size-mb M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, timeit, write_results
from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    make_cache,
    make_keys,
    publish_tree,
)
from vzpkg.mirror import Puller
from vzpkg.mirror.verify import sqv_available
from vzpkg.store.cachestore import CacheStore

NAME = "bench-1-x86_64-minimal"


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=env)


ROOT = Path(__file__).resolve().parents[1]


def launcher(base: Path, root: Path = ROOT, name: str = "vzpkg") -> Path:
    """A console script for the checkout at *root* (what pip writes for ``vzpkg``),
    its modules byte-compiled as an installed package has them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "vzpkg")],
                   check=True, env=env, capture_output=True)
    script = base / name
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(root)!r})\n"
                      "from vzpkg.cli.vzpkg import entry\nentry()\n")
    script.chmod(0o755)
    return script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--size-mb", type=int, default=40)
    ap.add_argument("--against", metavar="REV",
                    help="also time 'vzpkg pull' of the vzpkg package at git revision REV "
                         "(pull_cli_against), in the same rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vzpkg-bench-mirror-") as tmp:
        base = Path(tmp)
        keys = make_keys(base)
        try:
            return run(base, keys, args.rounds, args.size_mb, args.against)
        finally:
            keys.close()


def checkout(rev: str, dest: Path) -> Path:
    """The vzpkg package of revision *rev* under *dest* (git archive)."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "vzpkg"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run(base: Path, keys: Keys, rounds: int, size_mb: int, against: str | None = None
        ) -> int:
    m = make_cache(base / "src", NAME, size_mb << 20, seed=7)
    publish_tree(base / "src", base / "tree", keys)
    tar_rel = f"caches/{NAME}/{m.serial}/{NAME}.tar.zst"
    cfg_file = base / "vzpkg.yaml"
    times: dict[str, list[float]] = {"curl": [], "curl_durable": [], "curl_checked": [],
                                     "durable_write": [], "pull_api": [],
                                     "pull_api_gpg": [], "pull_cli": [], "python_start": []}
    env = {**os.environ, "VZPKG_CONFIG": str(cfg_file), "VZ_ROOT": str(base / "vz"),
           "GNUPGHOME": str(base / "verify-home")}
    (base / "verify-home").mkdir(mode=0o700)
    sh("gpg", "--batch", "--quiet", "--import", keys.pub, env=env)
    vzpkg = launcher(base)
    old_vzpkg = (launcher(base, checkout(against, base / "against"), "vzpkg-against")
                 if against else None)
    with MirrorServer(base / "tree") as srv:
        cfg_file.write_text(f"pull:\n  mirrors: [{srv.url}]\n  trusted_keys:\n"
                            f"    - {{file: {keys.pub}, fingerprint: {keys.fpr}}}\n")
        cfg = config_for(keys, [srv.url])
        url = srv.url + tar_rel
        out = base / "curl.tar.zst"

        def curl() -> None:
            sh("curl", "-sSf", "-o", out, url)

        def curl_durable() -> None:
            sh("curl", "-sSf", "-o", out, url)
            sh("sync", "--data", out)

        payload = (base / "tree" / tar_rel).read_bytes()

        def durable_write() -> None:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view[:1 << 20]):]
                os.fdatasync(fd)
            finally:
                os.close(fd)

        def curl_checked() -> None:
            sh("curl", "-sSf", "-o", out, url)
            sh("curl", "-sSf", "-o", f"{out}.asc", url + ".asc")
            sh("sha256sum", out)
            sh("gpg", "--batch", "--verify", f"{out}.asc", out, env=env)

        def api(use_sqv: bool | None = None) -> None:
            with Puller(CacheStore(base / "api"), cfg, use_sqv=use_sqv) as p:
                assert p.pull([NAME]).ok

        def cli() -> None:
            sh(vzpkg, "--cache-dir", base / "cli", "pull", NAME, "--json", env=env)

        def cli_against() -> None:
            assert old_vzpkg is not None
            sh(old_vzpkg, "--cache-dir", base / "cli", "pull", NAME, "--json", env=env)

        runs = {"curl": curl, "curl_durable": curl_durable, "curl_checked": curl_checked,
                "durable_write": durable_write, "pull_api": api,
                "pull_api_gpg": lambda: api(False), "pull_cli": cli,
                "python_start": lambda: sh(sys.executable, "-c", "pass")}
        if old_vzpkg is not None:
            runs["pull_cli_against"] = cli_against
            times["pull_cli_against"] = []
        keys_ = list(runs)
        for i in range(rounds):
            # rotate the order: no method always runs right after the same other one
            # (e.g. after curl, whose 40 MB were never synced and are still dirty)
            for key in keys_[i % len(keys_):] + keys_[:i % len(keys_)]:
                fn = runs[key]
                times[key].append(timeit(fn))
                for d in (base / "api", base / "cli"):
                    if d.exists():
                        got = CacheStore(d).entry(NAME)
                        assert got is not None and got.manifest.sha256 == m.sha256
                        shutil.rmtree(d)
                out.unlink(missing_ok=True)
    med = {k: median(v) for k, v in times.items()}
    result = {
        "size_bytes": m.size, "rounds": rounds, "against": against,
        "verifier": "sqv" if sqv_available() else "gpg",
        "median_seconds": med,
        "runs_seconds": times,
        "ratio_vs_curl": {k: med[k] / med["curl"] for k in med},
        "ratio_vs_curl_checked": {k: med[k] / med["curl_checked"] for k in med},
        "ratio_vs_curl_durable": {k: med[k] / med["curl_durable"] for k in med},
        "target": "pull within 1.3x of curl, including verification; the command line "
                  "within 1.3x of curl + sync --data of the same file",
    }
    path = write_results("mirror", result)
    mb = m.size / (1 << 20)
    for k, v in med.items():
        print(f"{k:13s} median {v:6.3f}s  {mb / v:7.1f} MiB/s  "
              f"x{v / med['curl']:.2f} of curl  x{v / med['curl_checked']:.2f} of checked curl")
    print(f"vzpkg pull (CLI) x{med['pull_cli'] / med['curl_durable']:.2f} of curl + sync; "
          f"in-process x{med['pull_api'] / med['curl_durable']:.2f}; floor (in-process + "
          f"python -c pass) x{(med['pull_api'] + med['python_start']) / med['curl_durable']:.2f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
