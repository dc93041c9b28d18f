"""The dnf backend: RPM distributions installed with the host's dnf.

``dnf --installroot`` runs on the host with a configuration generated in the
build's private directory (never the host's /etc/dnf or /etc/yum.repos.d):
package signatures always checked against exactly the template's pinned keys
(imported into the root's rpmdb first), repomd.xml signatures too unless the
template says its distribution does not sign them, weak dependencies and docs
per the template's options.

dnf spends some 0.2 s importing its own Python modules before it does anything.
When a build is likely (``prestart``), that interpreter is started at once in
its namespaces and imports dnf while vzpkg checks the repositories and imports
the keys; it then gets dnf's command line on stdin and runs it exactly as
/usr/bin/dnf would (``dnf.cli.main.user_main``).  A host whose dnf is not a
Python script, or whose interpreter cannot import it, runs dnf the usual way.

Each dnf run happens in a host-tool sandbox (vzpkg.build.sandbox) that dies with
it: a root of its own where the host's system is read-only and only the
build's work directory and the shared package cache are writable, so a
scriptlet that leaves rpm's chroot finds no host file to change.  The cache
(``<pkg cache>/dnf/<distribution>-<hash>``) is bind mounted on the root's
/var/cache/dnf with keepcache=1, so a warm build downloads only repomd.xml;
/proc and a minimal /dev are mounted for the packages' scriptlets.  dnf
downloads in the host's network; just before the RPM transaction (after the
downloads) it leaves it for a new, empty network namespace and keeps only the
capabilities rpm needs (vzpkg.build.sandbox_init.restrict), so no scriptlet reaches
the network, mounts or makes device nodes.  A dnf that is not pre-started runs
twice instead: ``--downloadonly`` in the host's network, then ``--cacheonly``
in the restricted sandbox.

The rpm database goes where the target's own rpm looks for it (template
variable ``rpmdb_path``), set through ``%_dbpath`` in the private HOME's
.rpmmacros: Debian's rpm would otherwise put it under ~/.rpmdb.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.build.backends import Backend, BuildContext, RepoState
from vzpkg.build.backends.rpm_config import (
    DnfSettings,
    cache_key,
    dnf_argv,
    macros,
    render_conf,
    repo_id,
    repo_signed,
    rpm_repos,
)
from vzpkg.build.buildve import SAFE_PATH, BuildLog, BuildVE, close_work, open_work
from vzpkg.build.sandbox import (
    KEEP,
    LAUNCHER,
    Command,
    TreeMounts,
    Waiting,
    sandbox_dir,
    tool_command,
)
from vzpkg.core.errors import BuildError

if TYPE_CHECKING:       # imported where used: `vzpkg build` starts dnf before that
    from vzpkg.build.backends.rpm_repomd import RepoMeta
    from vzpkg.core.settings import Settings
    from vzpkg.template.model import Plan

# what rpm's scriptlets get in the tree: the package cache, /proc, a small /dev
TREE_MOUNTS = TreeMounts(mounts=("proc", "dev"), dev_extra=(), dev_links=("fd",))

# A pre-started dnf (PID 1's child in its sandbox; argv: the sandbox launcher's
# copy): imports dnf, says it is ready, then runs the command line it reads
# from stdin ({"argv": [...], "env": {...}, "keep": [...], "scratch": [...]})
# with a Base.do_transaction that first leaves the network, puts a throwaway
# layer over the shared package cache and drops capabilities (restrict); EOF
# instead means: not needed.
_WARM = r"""
import importlib.util, json, os, sys
try:
    from dnf.cli import main
    import dnf.base
except Exception as exc:
    print("vzpkg: cannot import dnf's modules:", exc, flush=True)
    sys.exit(97)
spec = importlib.util.spec_from_file_location("vzpkg_sandbox_init", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
print("vzpkg: dnf ready", flush=True)
line = sys.stdin.readline()
if not line:
    sys.exit(0)
req = json.loads(line)
os.environ.update(req["env"])
transaction = dnf.base.Base.do_transaction
def do_transaction(self, *args, **kwargs):
    sandbox.restrict(req["keep"], network=True, scratch_paths=req["scratch"])
    return transaction(self, *args, **kwargs)
dnf.base.Base.do_transaction = do_transaction
sys.argv = ["dnf", *req["argv"]]
main.user_main(req["argv"], exit_code=True)
"""
_READY = b"vzpkg: dnf ready\n"


def dnf_python() -> str | None:
    """The interpreter of the host's dnf script (its #! line), or None when dnf
    is not a Python script run directly by an interpreter."""
    path = shutil.which("dnf", path=SAFE_PATH)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    words = first[2:].decode("utf-8", "replace").split() if first.startswith(b"#!") else []
    if not words or not os.path.basename(words[0]).startswith("python"):
        return None
    return words[0]


class _Warm(Waiting):
    """One pre-started dnf for *root*: asked :meth:`ready`, then given its
    command line by :meth:`request`; or stopped unused by :meth:`stop`."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc)
        self.root = root

    def ready(self) -> bytes:
        """Wait until dnf is imported: b"" then, else what the interpreter said
        first (the rest of its output is left for the log)."""
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        return b"" if first == _READY else first or b"(no output)\n"

    def request(self, argv: list[str], env: dict[str, str], cache: Path) -> None:
        """Run dnf with *argv*; from the transaction on, what is written to the
        package *cache* (bound at its own path and on the root's /var/cache/dnf)
        is thrown away: no scriptlet changes what later builds install from."""
        req = {"argv": argv, "env": env, "keep": list(KEEP),
               "scratch": [str(cache), str(self.root / "var/cache/dnf")]}
        self.send(json.dumps(req).encode())


_EARLY: dict[Path, _Warm] = {}     # root -> started by prestart_early, not yet taken


def _outside_usr(python: str) -> list[Path]:
    """What the tool's root must show (read-only) for *python* to run there when
    it is not the host's own: its directory and its installation's."""
    real = Path(os.path.realpath(python))
    dirs = {Path(python).parent, real.parent.parent}
    return sorted(d for d in dirs if not d.is_relative_to("/usr"))


def _sandboxed(argv: list[str], root: Path, cache: Path, private: Path, *,
               restricted: bool = False, ro: list[Path] | None = None) -> Command:
    """*argv* in dnf's sandbox (its work directory: the root's parent): host
    network and every capability (the pre-started dnf restricts itself before
    the transaction), or with *restricted* an empty network, a throwaway layer
    over the package cache and the bounded capabilities."""
    work = root.parent
    mounts = dataclasses.replace(TREE_MOUNTS, binds=((str(cache), "var/cache/dnf", False),))
    rw = [cache, *(p for p in (private,) if not p.is_relative_to(work))]
    return tool_command(argv, work=work, net="new" if restricted else "host",
                        caps=KEEP if restricted else None, tree=root, tree_mounts=mounts,
                        rw=rw, ro=ro or [],
                        scratch=[cache, root / "var/cache/dnf"] if restricted else [])


def _spawn(root: Path, home: Path, cache: Path, settings: DnfSettings,
           log: BuildLog) -> _Warm | None:
    python = dnf_python()
    if python is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(macros(settings))      # rpm reads it on import
    cache.mkdir(parents=True, exist_ok=True)
    launcher = sandbox_dir(root.parent) / LAUNCHER.name
    cmd = _sandboxed([python, "-I", "-c", _WARM, str(launcher)], root, cache, home.parent,
                     ro=_outside_usr(python))
    env = {"HOME": str(home), "LC_ALL": "C.UTF-8"}
    return _Warm(root, log.spawn(cmd, step="dnf", env=env, stdin=subprocess.PIPE))


def prestart_early(plan: Plan, settings: Settings, *, force: bool) -> None:
    """For `vzpkg build`, as soon as the plan is known: when a dnf build of it is
    likely, start dnf's interpreter in the directory the build will use, before
    vzpkg even loads its build machinery; the build takes it (Dnf.prestart).
    One that no build takes is stopped by stop_early, or at exit."""
    if plan.backend != "dnf":
        return
    if not force and _built_from(settings.cache_dir / f"{plan.name}.manifest.json") \
            == plan.digest:
        return                                  # most likely up to date
    work = open_work(settings.work_dir, plan.name)
    dnf_settings = DnfSettings.from_plan(plan)
    cache = settings.pkg_cache_dir / "dnf" / cache_key(plan, dnf_settings)
    log = BuildLog(settings.cache_dir / ".logs" / f"{plan.name}.log")
    warm = _spawn(work / "root", work / "dnf" / "home", cache, dnf_settings, log)
    if warm is not None:
        if not _EARLY:
            atexit.register(stop_early)
        _EARLY[warm.root] = warm


def _built_from(manifest: Path) -> str | None:
    """The plan digest a stored manifest names (read directly: the store and its
    manifest model cost more to import than a guess is worth); None if unknown."""
    try:
        digest = json.loads(manifest.read_bytes()).get("plan_digest")
    except (OSError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None


def stop_early() -> None:
    """Stop every interpreter prestart_early started that no build took, and
    remove its work directory if no build did."""
    while _EARLY:
        root, warm = _EARLY.popitem()
        warm.stop()
        with contextlib.suppress(BuildError):
            close_work(root.parent)


# (pattern in dnf's output, what happened, how to fix it); the first that matches
_UNPINNED = ("package {0} is signed by a key the template does not pin",
             "if the distribution changed its key, verify the new key and pin it under keys:")
_DIAGNOSES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"Package (\S+) is not signed"),
     "package {0} is not signed",
     "the repository serves an unsigned package; a build never installs one"),
    (re.compile(r"not correct for this package.*?Failing package is: (\S+)", re.S), *_UNPINNED),
    (re.compile(r"Public key for (\S+) is not installed"), *_UNPINNED),
    (re.compile(r"(\S+\.rpm): Downloading successful, but checksum doesn't match"),
     "{0} does not match the checksum in the repository metadata",
     "the mirror is corrupt or being updated; try again later or use another mirror"),
    (re.compile(r"nothing provides (.+?)(?: from|$)", re.M),
     "a dependency cannot be resolved: nothing provides {0}",
     "the repositories do not hold every package the set needs; check the "
     "template's repositories and package names"),
    (re.compile(r"No match for argument: (\S+)"),
     "no package {0} in the repositories",
     "check the package name in the template's set, and its repositories"),
    (re.compile(r"Failed to download metadata for repo '([^']+)'"),
     "cannot download the metadata of repository {0}",
     "is the repository up and its URL right? (override with --set mirrors.NAME=URL)"),
    (re.compile(r"Cache-only enabled but no cache for '([^']+)'"),
     "repository {0} is not in the package cache",
     "build once without --offline to fill the package cache"),
    (re.compile(r"repomd\.xml GPG signature verification error"),
     "the signature of repomd.xml does not verify{0}",
     "check the keys: entries of the template"),
)


def diagnose(output: str) -> tuple[str, str] | None:
    """(message, hint) for a dnf failure recognised in *output*."""
    for rx, msg, hint in _DIAGNOSES:
        m = rx.search(output)
        if m:
            arg = m.group(1).strip() if m.groups() else ""
            return msg.format(arg), hint
    return None


class Dnf(Backend, name="dnf", family="rpm"):
    @classmethod
    def start_early(cls, plan: Plan, settings: Settings, *, force: bool) -> None:
        prestart_early(plan, settings, force=force)

    @classmethod
    def stop_early(cls) -> None:
        stop_early()

    """RPM distributions (Fedora, AlmaLinux, Rocky, the tests' vztest)."""

    tools = ("dnf", "rpm", "gpgv", "unshare", "setpriv")
    ve_ahead = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.settings = DnfSettings.from_plan(self.plan)
        self.private = ctx.work / "dnf"
        self.home = self.private / "home"
        self.cache = ctx.pkg_cache / "dnf" / cache_key(self.plan, self.settings)
        self._metas: list[RepoMeta] = []
        self._warm: _Warm | None = None

    # -- configuration ---------------------------------------------------------------
    def key_files(self) -> list[Path]:
        keys = self.private / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        out = []
        for i, k in enumerate(self.plan.keys):
            p = keys / f"{i:02d}-{k.fingerprint}.asc"
            p.write_text(k.armored, encoding="utf-8")
            out.append(p)
        return out

    def prepare(self) -> Path:
        """Write the private configuration; returns the dnf.conf path."""
        for d in ("repos.d", "vars", "home"):
            (self.private / d).mkdir(parents=True, exist_ok=True)
        (self.home / ".rpmmacros").write_text(macros(self.settings))
        conf = self.private / "dnf.conf"
        self.cache.mkdir(parents=True, exist_ok=True)
        conf.write_text(render_conf(self.plan, self.settings, self.key_files(),
                                    offline=self.ctx.offline))
        if not self.ctx.offline:
            self.drop_stale_metadata()
        return conf

    def drop_stale_metadata(self) -> None:
        """dnf's cached metadata never expires by age (metadata_expire=-1): keep
        a repository's only while its repomd.xml is the one repo_state verified
        just now; otherwise remove it (packages stay) so dnf fetches it anew."""
        for i, repo in enumerate(rpm_repos(self.plan)):
            rid = repo_id(repo)
            found = list(self.cache.glob(f"{rid}-*/repodata/repomd.xml"))
            meta = self._metas[i] if i < len(self._metas) else None
            if (meta is not None and len(found) == 1
                    and hashlib.sha256(found[0].read_bytes()).hexdigest() == meta.sha256):
                continue
            for d in self.cache.glob(f"{rid}-*/repodata"):
                _rm(d)
            for f in (f"{rid}.solv", f"{rid}-filenames.solvx", f"{rid}-updateinfo.solvx",
                      f"{rid}-presto.solvx", f"{rid}-other.solvx"):
                (self.cache / f).unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """Environment of rpm and dnf: the private HOME (for %_dbpath) and
        SOURCE_DATE_EPOCH, which rpm uses as every package's install time, so
        the rpmdb of two builds against the same repositories is the same."""
        env = {"HOME": str(self.home), "LC_ALL": "C.UTF-8"}
        sde = os.environ.get("SOURCE_DATE_EPOCH", "")
        if sde.isdigit():
            env["SOURCE_DATE_EPOCH"] = sde
        elif self._metas:
            env["SOURCE_DATE_EPOCH"] = str(max(m.timestamp for m in self._metas))
        return env

    # -- repositories ------------------------------------------------------------------
    def repo_state(self) -> RepoState:
        from vzpkg.build.backends.rpm_repomd import MetaFetcher, repo_meta
        fetch = MetaFetcher(self.ctx.pkg_cache / "dnf" / "meta", offline=self.ctx.offline)
        try:
            metas = [repo_meta(fetch, url=r.url, metalink=r.metalink,
                               mirrorlist=r.mirrorlist, keyring=self.ctx.keyring,
                               signed=repo_signed(self.settings, r))
                     for r in rpm_repos(self.plan)]
        except BuildError as exc:
            raise self.fail("repository", exc.message.removeprefix(
                "build step 'repository' failed: "), hint=exc.hint) from None
        finally:
            fetch.close()
        self._metas = metas
        return RepoState.of(((m.url, m.sha256) for m in metas),
                            max(m.timestamp for m in metas))

    # -- running dnf -------------------------------------------------------------------
    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        """One dnf at a time per cache directory (concurrent builds share it)."""
        with open(self.cache.with_name(self.cache.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def prestart(self, root: Path) -> None:
        """Start dnf's interpreter for *root* now, or take the one `vzpkg build`
        started for it (see prestart_early): it imports dnf while the build
        checks the repositories (see the module docstring)."""
        if self._warm is None:
            self._warm = _EARLY.pop(root, None)
            if self._warm is not None:
                self.ctx.log.write("(dnf was started by the command line)")
            else:
                self._warm = _spawn(root, self.home, self.cache, self.settings, self.ctx.log)

    def close(self) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.stop()

    def dnf(self, root: Path, *args: str, step: str) -> None:
        """Run ``dnf --installroot=root ARGS`` in private namespaces."""
        conf = self.prepare()
        argv = [*dnf_argv(self.settings, conf=conf, root=root, private=self.private,
                          offline=self.ctx.offline, host_arch=os.uname().machine), *args]
        with self._cache_lock():
            start = self._log_size()
            try:
                self._run(root, argv, step)
            except BuildError:
                found = diagnose(self._log_since(start))
                if found is None:
                    raise
                raise self.fail(step, found[0], hint=found[1]) from None

    def _run(self, root: Path, argv: list[str], step: str) -> None:
        warm, self._warm = self._warm, None
        log = self.ctx.log
        if warm is not None and warm.root == root:
            said = warm.ready()
            if not said:
                log.write(f"$ {' '.join(argv)}   (pre-started)")
                warm.request(argv[1:], self.env(), self.cache)
                self.ctx.running()
                log.follow(warm.proc, step=step)
                return
            log.write(said.decode("utf-8", "replace"))
            with contextlib.suppress(BuildError):    # the rest of what it said
                log.follow(warm.proc, step=step)
            log.write("(dnf could not be pre-started: running it the usual way)")
        elif warm is not None:
            warm.stop()
        if "--cacheonly" not in argv:       # downloads in the host's network first
            log.run(_sandboxed([*argv, "--downloadonly"], root, self.cache, self.private),
                    step=step,
                    env=self.env(), started=self.ctx.running)
            argv = [*argv[:1], "--cacheonly", *argv[1:]]
        log.run(_sandboxed(argv, root, self.cache, self.private, restricted=True), step=step,
                env=self.env(), started=self.ctx.running)

    def _log_size(self) -> int:
        try:
            return self.ctx.log.path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, start: int, limit: int = 1 << 18) -> str:
        """What the log gained since offset *start* (at most *limit* bytes)."""
        path = self.ctx.log.path
        try:
            with path.open("rb") as f:
                f.seek(max(start, path.stat().st_size - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def import_keys(self, root: Path) -> None:
        """Put the pinned keys into the root's rpmdb (creating it at the target's
        path), so rpm checks every package against exactly them."""
        self.prepare()
        self.ctx.log.run(["rpm", "--root", str(root), "--dbpath", self.settings.rpmdb_path,
                          "--import", *map(str, self.key_files())],
                         step="import keys", env=self.env())

    # -- Backend interface -------------------------------------------------------------
    def bootstrap(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.import_keys(root)
        self.dnf(root, "install", *self.plan.packages, step="dnf install")
        self.check_dbpath(root)

    def update(self, ve: BuildVE) -> None:
        self.import_keys(ve.root)
        self.dnf(ve.root, "upgrade", step="dnf upgrade")

    def clean(self, root: Path) -> None:
        """No dnf caches or logs in the cache; sqlite journals folded in."""
        cache = root / "var/cache/dnf"
        if cache.is_dir() and not os.path.ismount(cache):
            for child in cache.iterdir():
                _rm(child)
        for pattern in ("var/log/dnf*.log*", "var/log/hawkey.log*"):
            for f in root.glob(pattern):
                f.unlink()
        # dnf's history database records wall-clock times: a cache would differ
        # from build to build.  dnf starts a new one in the VE when it first runs.
        for f in root.glob("var/lib/dnf/*"):
            if f.name.startswith(("history.sqlite", "expired_repos.json")):
                f.unlink()
        from vzpkg.build.backends import rpm_db
        rpm_db.checkpoint(root, self.settings.rpmdb_path)
        (root / self.settings.rpmdb_path.lstrip("/") / ".rpm.lock").unlink(missing_ok=True)

    def check_dbpath(self, root: Path) -> None:
        from vzpkg.build.backends import rpm_db
        want = rpm_db.target_dbpath(root)
        if want is not None and want != self.settings.rpmdb_path:
            raise self.fail("rpmdb", f"the target's rpm keeps its database in {want}, "
                                     f"but the template put it in {self.settings.rpmdb_path}",
                            hint=f"set the template variable rpmdb_path: {want} for "
                                 f"release {self.plan.release}")

    def tool_versions(self) -> dict[str, str]:
        """Debian package versions of the host tools (dpkg-query is ~50x faster
        than starting dnf for ``dnf --version``)."""
        out: dict[str, str] = {}
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\n",
                                "dnf", "rpm", "libdnf2", "librepo0"],
                               capture_output=True, text=True, check=False)
            for line in r.stdout.splitlines():
                name, _, version = line.partition("\t")
                if version:
                    out[name] = version
        except OSError:
            pass
        if "dnf" not in out:
            r = subprocess.run(["dnf", "--version"], capture_output=True, text=True,
                               check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
            first = r.stdout.strip().splitlines()[:1]
            if r.returncode == 0 and first:
                out["dnf"] = first[0].strip()
        return out


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        for c in p.iterdir():
            _rm(c)
        p.rmdir()
    else:
        p.unlink()
