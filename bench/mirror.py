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
                                          tarball with sha256 (on its own thread)
                                          and the detached signature checked from
                                          that sha256 (vzpkg.mirror.pgpsig), flushed
                                          to disk behind the writer, atomic commit
                                          to a fresh cache directory
  the same, signatures checked by gpg     (the fallback without sqv)
  vzpkg pull (a new process)              the same from the command line, with the
                                          Python start-up (its modules byte-compiled
                                          first, as an installed package has them)
  python -c pass                          the interpreter's own start-up (the floor of
                                          any command line: pull_api + this)
  python -c 'import <stdlib modules>'     the interpreter importing exactly the
                                          standard modules a CLI pull loads (listed
                                          by one pull first): pull_api + this is
                                          the floor of any CPython command line that
                                          does this pull (cpython_floor_*)
The order of the methods rotates from round to round.  Medians and ratios
against curl go to bench/results/mirror.json.

And where the time of ``vzpkg pull`` goes (``phases_ms``; ``phases_against_ms`` for
--against): the same command, run in the rounds as pull_cli_phases through a driver
that notes the time at the start of the interpreter's own code, after the imports,
and around the pull's steps (each a wrapper on the method, no change to vzpkg);
medians, in milliseconds:
  start        exec to the first line of the program (the interpreter, site)
  imports      the command line and every module a pull uses
  setup        argument parsing, vzpkg.yaml (a kept parse), mirror config, keys
  index        index.json and its signature fetched, the signature checked (sqv)
  manifest     the manifest fetched and checked, the tarball's signature fetched,
               sqv started on a pipe
  download     the tarball received, written, hashed and fed to sqv
  fsync        the last fdatasync once the last byte is written
  verdict      the tarball signature's verdict: from the download's sha256 state
               (vzpkg.mirror.pgpsig, the public-key library loaded then), or
               waiting for sqv's
  commit       the store's atomic replace (manifest, rename, directory fsync)
  exit         the report printed, the process gone

    python bench/mirror.py [--rounds N] [--size-mb M]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


PHASE_DRIVER = """\
import sys, time
T = {"main": time.time()}
sys.path.insert(0, ROOT)
import vzpkg.cli.vzpkg as cli
if hasattr(cli, "defer_import"):     # what main() does for a pull, before any import
    for name in getattr(cli, "DEFERRED", {}).get("pull", ("inspect",)):
        cli.defer_import(name)
import vzpkg.cli.cmd_mirror, vzpkg.mirror.pull, vzpkg.mirror.fetch, vzpkg.mirror.flush
import vzpkg.mirror.verify, vzpkg.mirror.config, vzpkg.mirror.progress
import vzpkg.cli.common as common
T["imported"] = time.time()
SPANS = {}


def wrap(owner, attr, key):
    fn = getattr(owner, attr)

    def timed(*a, **k):
        t = time.time()
        try:
            return fn(*a, **k)
        finally:
            SPANS.setdefault(key, []).append((t, time.time()))
    setattr(owner, attr, timed)


M = vzpkg.mirror
wrap(M.pull.Puller, "pull", "pull")
wrap(M.pull.Puller, "index", "index")
wrap(M.pull.Puller, "_fetch_and_commit", "fetch_and_commit")
wrap(M.fetch.Fetcher, "download", "download")
wrap(M.flush.Flusher, "finish", "fsync")
wrap(M.verify.Check, "result", "verdict")
if hasattr(M.verify, "HashCheck"):
    wrap(M.verify.HashCheck, "result", "verdict")
wrap(M.pull.Puller, "_commit", "commit")
exit_fast = common.exit_fast


def report(code):
    T["end"] = time.time()
    sys.stderr.write("PHASES " + repr((T, SPANS)) + "\\n")
    # the standard modules the pull loaded (not the stand-ins it left unloaded)
    mods = sorted(n for n, m in list(sys.modules.items())
                  if n.partition(".")[0] in sys.stdlib_module_names
                  and type(m).__name__ != "Deferred")
    sys.stderr.write("STDLIB " + " ".join(mods) + "\\n")
    sys.stderr.write("DEFERRED " + " ".join(n for n, m in list(sys.modules.items())
                                            if type(m).__name__ == "Deferred") + "\\n")
    exit_fast(code)


common.exit_fast = report
cli.entry()
"""


def phases(t_spawn: float, t_done: float, stderr: str) -> dict[str, float]:
    """The phases (ms) of one run of PHASE_DRIVER (see the module docstring)."""
    line = next(x for x in stderr.splitlines() if x.startswith("PHASES "))
    marks, spans = ast.literal_eval(line[len("PHASES "):])

    (pull_start, pull_end), = spans["pull"]
    (fc_start, _), = spans["fetch_and_commit"]
    (dl_start, _), = spans["download"]

    def span(key: str) -> float:
        if key == "verdict":        # the tarball's (the index's is inside "index")
            return float(sum(b - a for a, b in spans[key] if a >= dl_start))
        return float(sum(b - a for a, b in spans.get(key, [])))
    out = {"start": marks["main"] - t_spawn, "imports": marks["imported"] - marks["main"],
           "setup": pull_start - marks["imported"], "index": span("index"),
           "manifest": dl_start - fc_start, "download": span("download") - span("fsync"),
           "fsync": span("fsync"), "verdict": span("verdict"), "commit": span("commit"),
           "exit": t_done - pull_end}
    out["other"] = (t_done - t_spawn) - sum(out.values())   # the pull's own bookkeeping
    out["total"] = t_done - t_spawn
    return {k: v * 1000 for k, v in out.items()}


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
                                     "pull_api_gpg": [], "pull_cli": [], "python_start": [],
                                     "pull_cli_phases": []}
    env = {**os.environ, "VZPKG_CONFIG": str(cfg_file), "VZ_ROOT": str(base / "vz"),
           "GNUPGHOME": str(base / "verify-home")}
    (base / "verify-home").mkdir(mode=0o700)
    sh("gpg", "--batch", "--quiet", "--import", keys.pub, env=env)
    vzpkg = launcher(base)
    old_root = checkout(against, base / "against") if against else None
    old_vzpkg = launcher(base, old_root, "vzpkg-against") if old_root else None
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

        runs_phases: dict[str, list[dict[str, float]]] = {"": [], "_against": []}

        def phase_driver(root: Path, suffix: str = "") -> Path:
            driver = base / f"phases{suffix}.py"
            if not driver.exists():
                driver.write_text(f"ROOT = {str(root)!r}\n" + PHASE_DRIVER)
            return driver

        def cli_phases(root: Path, suffix: str = "") -> None:
            driver = phase_driver(root, suffix)
            t0 = time.time()
            r = subprocess.run([sys.executable, str(driver), "--cache-dir", str(base / "cli"),
                                "pull", NAME, "--json"], env=env, capture_output=True,
                               text=True, check=True)
            runs_phases[suffix].append(phases(t0, time.time(), r.stderr))

        stdlib: list[str] = []
        stdlib_imports = "pass"         # set below, once the pull's modules are known
        runs = {"curl": curl, "curl_durable": curl_durable, "curl_checked": curl_checked,
                "durable_write": durable_write, "pull_api": api,
                "pull_api_gpg": lambda: api(False), "pull_cli": cli,
                "pull_cli_phases": lambda: cli_phases(ROOT),
                "python_start": lambda: sh(sys.executable, "-c", "pass"),
                "python_stdlib": lambda: sh(sys.executable, "-c", stdlib_imports)}
        if old_root is not None:
            runs["pull_cli_against"] = cli_against
            runs["pull_cli_phases_against"] = lambda: cli_phases(old_root, "_against")
            times["pull_cli_against"] = []
            times["pull_cli_phases_against"] = []
        # what a pull in CPython cannot do without: the interpreter and the standard
        # modules this pull loads (found by one pull through the phase driver)
        r = subprocess.run([sys.executable, str(phase_driver(ROOT)), "--cache-dir",
                            str(base / "probe"), "pull", NAME, "--json"], env=env,
                           capture_output=True, text=True, check=True)
        shutil.rmtree(base / "probe")
        lines = r.stderr.splitlines()
        stdlib = next(x for x in lines if x.startswith("STDLIB ")).split()[1:]
        deferred = next(x for x in lines if x.startswith("DEFERRED")).split()[1:]
        # the modules the pull left as stand-ins are stand-ins here too
        stdlib_imports = ("import sys, types\n"
                          f"for n in {deferred!r}:\n"
                          "    sys.modules[n] = types.ModuleType(n)\n"
                          "import " + ", ".join(stdlib))
        times["python_stdlib"] = []
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
    phases_ms, phases_against_ms = (
        {k: round(median([p[k] for p in runs]), 2) for k in runs[0]} if runs else {}
        for runs in (runs_phases[""], runs_phases["_against"]))
    result = {
        "size_bytes": m.size, "rounds": rounds, "against": against,
        "verifier": "sqv" if sqv_available() else "gpg",
        "median_seconds": med,
        "phases_ms": phases_ms,
        "phases_against_ms": phases_against_ms,
        "runs_seconds": times,
        "ratio_vs_curl": {k: med[k] / med["curl"] for k in med},
        "ratio_vs_curl_checked": {k: med[k] / med["curl_checked"] for k in med},
        "ratio_vs_curl_durable": {k: med[k] / med["curl_durable"] for k in med},
        "stdlib_modules": stdlib,
        "cpython_floor_seconds": med["pull_api"] + med["python_stdlib"],
        "cpython_floor_vs_curl_durable": (med["pull_api"] + med["python_stdlib"])
                                         / med["curl_durable"],
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
          f"python -c pass) x{(med['pull_api'] + med['python_start']) / med['curl_durable']:.2f}"
          f"; CPython floor (in-process + python importing the {len(stdlib)} standard "
          f"modules the pull loads) x{result['cpython_floor_vs_curl_durable']:.2f}")
    print("vzpkg pull, where the time goes (median ms): " +
          ", ".join(f"{k} {v:.1f}" for k, v in phases_ms.items()))
    if phases_against_ms:
        print(f"the same at {against}: " +
              ", ".join(f"{k} {v:.1f}" for k, v in phases_against_ms.items()))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
