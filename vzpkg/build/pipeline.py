"""Build and update caches: the pipeline from a Plan to a committed cache.

    Plan ─► backend.repo_state ─► (up to date? stop) ─► pre-cache (host)
         ─► backend.bootstrap ─► post-install (in the VE) ─► backend.clean
         ─► finalize ─► post-cache (host) ─► archive.pack ─► store.commit

Work that nothing waits for right away runs in a thread beside the pipeline
(the host tools' versions, closing the private GnuPG home, reading the package
list while the tree is packed); every such thread is joined before the build
returns, whatever happens.

Each build works in a private directory ``<cache dir>/.work/<name>.<pid>``
that is removed whatever happens; one left by a killed build is removed by
the next build (its pid is gone).  Nothing is mounted in the host's mount
namespace (see vzpkg.build.buildve), so removing it is safe.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from vzpkg import __version__
from vzpkg.build.backends import Backend, BuildContext, get_backend
from vzpkg.build.buildve import (
    BuildLog,
    BuildVE,
    StartedScript,
    close_work,
    open_work,
    run_host_script,
)
from vzpkg.build.finalize import finalize
from vzpkg.build.payloads import enabled as payloads_enabled
from vzpkg.build.pkgcache import CachingProxy
from vzpkg.build.sandbox import Sandbox
from vzpkg.core.errors import BuildError, VzError
from vzpkg.core.gpg import Keyring
from vzpkg.core.pgpkeys import ParseError, keyring_bytes
from vzpkg.core.settings import Settings
from vzpkg.core.types import InstalledPackage
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest
from vzpkg.store.packages import read_installed
from vzpkg.template.model import Plan, ScriptStage

Progress = Callable[[str, str], None]   # (cache name, message)
T = TypeVar("T")


class _Task(Generic[T]):
    """*fn* running in a thread; ``result()`` waits for it and returns its value
    or raises its exception."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:   # handed to the caller of result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Status(StrEnum):
    BUILT = "built"
    UP_TO_DATE = "up-to-date"
    UPDATED = "updated"
    NO_UPDATES = "no-updates"


@dataclass(frozen=True)
class BuildResult:
    name: str
    status: Status
    seconds: float
    log: str | None = None
    serial: int | None = None
    sha256: str | None = None
    size: int | None = None
    packages: int | None = None
    downloaded_bytes: int = 0
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, status: Status, m: Manifest, t0: float, proxy: CachingProxy,
           log: Path | None = None) -> BuildResult:
        """The result for cache *m*, *t0* being when the work began."""
        return cls(m.name, status, time.monotonic() - t0, log=str(log) if log else None,
                   serial=m.serial, sha256=m.sha256, size=m.size, packages=len(m.packages),
                   downloaded_bytes=proxy.stats.downloaded_bytes)

    def to_json(self) -> dict[str, object]:
        return {k: (v.value if isinstance(v, StrEnum) else v)
                for k, v in self.__dict__.items()}


def _nothing(_name: str, _msg: str) -> None:
    return None


def script_env(plan: Plan, root: Path | None) -> dict[str, str]:
    """The documented environment of template scripts."""
    env = {
        "DISTRIBUTION": plan.distribution, "RELEASE": plan.release,
        "ARCH": plan.arch, "TARGET_ARCH": plan.target_arch, "SET": plan.set_name,
        "CACHE_NAME": plan.name, "PLAN_DIGEST": plan.digest, "BACKEND": plan.backend,
        "PACKAGES": " ".join(plan.packages),
        "VE_ROOT": str(root) if root is not None else "/",
    }
    codename = plan.var("codename")
    if codename:
        env["CODENAME"] = codename
    return env


class _Build:
    """State of one build or update of one cache."""

    def __init__(self, plan: Plan, settings: Settings, *, offline: bool,
                 progress: Progress, verbose: Callable[[str], None] | None) -> None:
        self.plan = plan
        self.settings = settings
        self.offline = offline
        self.progress = progress
        self.store = CacheStore(settings.cache_dir)
        self.work = open_work(settings.work_dir, plan.name)
        self.logs = settings.cache_dir / ".logs"
        self.log = BuildLog(self.logs / f"{plan.name}.log", echo=verbose)
        self.log.path.write_text(f"vzpkg {__version__}: {plan.name} digest {plan.digest}\n")
        self.tasks: list[_Task[object]] = []
        self.closers: list[Callable[[], None]] = []
        self.sandbox = Sandbox()      # the build's network namespace, made when needed

    def later(self, fn: Callable[[], T]) -> _Task[T]:
        """Run *fn* beside the build; joined by close() at the latest."""
        task = _Task(fn)
        self.tasks.append(task)   # type: ignore[arg-type]
        return task

    def say(self, msg: str) -> None:
        self.log.write(f"== {msg}")
        self.progress(self.plan.name, msg)

    def keyring(self) -> Path:
        """The binary keyring of exactly the plan's pinned keys.  The private
        GnuPG home is needed only to make it: it is closed beside the build."""
        if not self.plan.keys:
            raise BuildError("keys", f"template {self.plan.template_file} pins no "
                                     "signing key; a build never runs unverified",
                             hint="add a keys: entry with the archive key and its "
                                  "fingerprint")
        dest = self.work / "keyring.gpg"
        try:    # read the armored files directly: no gpg process on the common path
            if any(k.armored.count("-----BEGIN PGP PUBLIC KEY BLOCK-----") != 1
                   for k in self.plan.keys):
                raise ParseError("not exactly one armored block")
            dest.write_bytes(keyring_bytes([(k.armored, k.fingerprint, str(k.file))
                                            for k in self.plan.keys]))
            return dest
        except ParseError:
            pass    # a key file this reader does not understand: let gpg do it
        kr = Keyring()
        try:
            fprs = [kr.import_pinned(k.armored, k.fingerprint, source=str(k.file))
                    for k in self.plan.keys]
            return kr.export_binary(fprs, dest)
        finally:
            self.later(kr.close)

    def context(self, keyring: Path, proxy: CachingProxy,
                running: Callable[[], None] = lambda: None) -> BuildContext:
        return BuildContext(plan=self.plan, pkg_cache=self.settings.pkg_cache_dir,
                            proxy=proxy, work=self.work, keyring=keyring, log=self.log,
                            offline=self.offline, running=running,
                            payloads=payloads_enabled(os.environ, self.settings.config),
                            sandbox=self.sandbox)

    def pack_and_commit(self, backend: Backend, root: Path, source_date: int,
                        repo_digest: str,
                        packages: Callable[[], tuple[InstalledPackage, ...]],
                        plan_digest: str | None,
                        tools: Callable[[], dict[str, str]]) -> Manifest:
        """Pack *root* and commit it; *packages* and *tools* are asked for
        after packing (they may be computed meanwhile)."""
        from vzpkg import archive  # loaded by _preload_archive by now, as a rule
        comp = self.plan.options.compression
        staged = self.store.staging(self.plan.name, comp)
        try:
            self.say("packing")
            res = archive.pack(root, staged, source_date=source_date, compression=comp)
            p = self.plan
            manifest = Manifest(
                name=p.name, distribution=p.distribution, release=p.release, arch=p.arch,
                set_name=p.set_name, serial=self.store.next_serial(self.plan.name),
                plan_digest=plan_digest, repo_digest=repo_digest, source_date=source_date,
                backend=backend.name, tools={"vzpkg": __version__, **tools()},
                packages=packages(), file_count=res.file_count,
                unpacked_size=res.unpacked_size,
                tarball=self.plan.name + comp.suffix, compression=comp.value,
                size=res.compressed_size, sha256=res.sha256, signature=None,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.store.commit(self.plan.name, staged, manifest)
            return manifest
        finally:
            staged.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            for closer in self.closers:
                with contextlib.suppress(Exception):   # the build's own error wins
                    closer()
            for task in self.tasks:
                with contextlib.suppress(Exception):   # the build's own error wins
                    task.result()
        finally:
            self.sandbox.close()
            close_work(self.work)


def _preload_archive() -> None:
    """Import vzpkg.archive (libarchive: some 40 ms, an ``ldconfig -p`` among
    them) in a daemon thread while the build waits on its package manager.
    Packing and unpacking import it again in the build's own thread: an import
    error surfaces there, as if this had not run."""
    def load() -> None:
        with contextlib.suppress(Exception):
            import vzpkg.archive  # noqa: F401
    threading.Thread(target=load, name="vzpkg-preload", daemon=True).start()


def _source_date(env: Mapping[str, str], repo_date: int) -> int:
    sde = env.get("SOURCE_DATE_EPOCH")
    if sde:
        if not sde.isdigit():
            raise VzError(f"SOURCE_DATE_EPOCH={sde!r} is not a number of seconds",
                          hint="unset it or give an integer")
        return int(sde)
    return repo_date


def build(plan: Plan, settings: Settings, *, force: bool = False, offline: bool = False,
          progress: Progress = _nothing, verbose: Callable[[str], None] | None = None,
          env: Mapping[str, str] | None = None) -> BuildResult:
    """Build *plan* into the cache store (or report that it is up to date)."""
    env = os.environ if env is None else env
    t0 = time.monotonic()
    cls = get_backend(plan.backend)
    b = _Build(plan, settings, offline=offline, progress=progress, verbose=verbose)
    tools: list[_Task[dict[str, str]]] = []
    ahead: list[StartedScript] = []
    root = b.work / "root"

    def beside() -> None:
        """Once the package manager runs: load the packer, ask the tool versions,
        and (where the backend allows) make the post-install script's VE."""
        if tools:
            return
        _preload_archive()
        tools.append(b.later(backend.tool_versions))
        script = plan.script(ScriptStage.POST_INSTALL)
        if script and backend.ve_ahead:
            with contextlib.suppress(BuildError, OSError):   # then it is made when needed
                ahead.append(StartedScript(root, b.log, script, script_env(plan, None),
                                           b.sandbox))
                b.closers.append(ahead[0].stop)
    try:
        with b.store.lock(plan.name), \
                CachingProxy(settings.pkg_cache_dir, offline=offline) as proxy:
            backend = cls(b.context(b.keyring(), proxy, beside))
            b.closers.append(backend.close)
            current = b.store.manifest(plan.name)
            if force or current is None or current.plan_digest != plan.digest:
                backend.prestart(root)      # a build is likely: let it start early
            b.say("checking repositories")
            state = backend.repo_state()
            if (not force and current is not None and current.plan_digest == plan.digest
                    and current.repo_digest == state.digest):
                b.say("up to date")
                return BuildResult.of(Status.UP_TO_DATE, current, t0, proxy)
            source_date = _source_date(env, state.source_date)
            script = plan.script(ScriptStage.PRE_CACHE)
            if script:
                b.say("pre-cache script")
                run_host_script(script, script_env(plan, root), b.log, b.work)
            b.say(f"bootstrapping with {plan.backend}")
            backend.bootstrap(root)
            beside()            # if the backend did not say when its work began
            _missing(proxy, b)
            script = plan.script(ScriptStage.POST_INSTALL)
            if script:
                b.say("post-install script")
                with BuildVE(root, b.log, b.sandbox) as ve:
                    ve.run_script(script, script_env(plan, None), *ahead)
            b.say("finalizing")
            backend.clean(root)
            finalize(root, plan.options)
            script = plan.script(ScriptStage.POST_CACHE)
            if script:
                b.say("post-cache script")
                run_host_script(script, script_env(plan, root), b.log, b.work)
            installed = b.later(lambda: read_installed(root))   # read while packing
            m = b.pack_and_commit(backend, root, source_date, state.digest,
                                  installed.result, plan.digest, tools[0].result)
            b.say(f"done: serial {m.serial}, {len(m.packages)} packages")
            return BuildResult.of(Status.BUILT, m, t0, proxy, b.log.path)
    finally:
        b.close()


def _missing(proxy: CachingProxy, b: _Build) -> None:
    if proxy.stats.missing:
        raise BuildError("offline", "not in the package cache: "
                         + ", ".join(proxy.stats.missing[:5]),
                         log=str(b.log.path),
                         hint="build once without --offline to fill the package cache")


def update(plan: Plan, settings: Settings, *, offline: bool = False,
           progress: Progress = _nothing, verbose: Callable[[str], None] | None = None
           ) -> BuildResult:
    """Unpack the newest cache, upgrade it in a temporary VE, repack only if a
    package changed."""
    _preload_archive()
    t0 = time.monotonic()
    cls = get_backend(plan.backend)
    b = _Build(plan, settings, offline=offline, progress=progress, verbose=verbose)
    try:
        with b.store.lock(plan.name), \
                CachingProxy(settings.pkg_cache_dir, offline=offline) as proxy:
            current = b.store.manifest(plan.name)
            tarball = b.store.tarball(plan.name)
            if current is None or tarball is None:
                raise VzError(f"there is no cache {plan.name} to update",
                              hint=f"build it first: vzpkg build {plan.name}")
            backend = cls(b.context(b.keyring(), proxy))
            tools = b.later(backend.tool_versions)
            b.say("checking repositories")
            state = backend.repo_state()
            root = b.work / "root"
            b.say("unpacking the cache")
            from vzpkg import archive
            archive.unpack(tarball, root)
            with BuildVE(root, b.log, b.sandbox) as ve:
                env = script_env(plan, None)
                for stage in (ScriptStage.PRE_UPDATE, None, ScriptStage.POST_UPDATE):
                    if stage is None:
                        b.say("upgrading packages")
                        backend.update(ve)
                        continue
                    script = plan.script(stage)
                    if script:
                        b.say(f"{stage.value} script")
                        ve.run_script(script, env)
            _missing(proxy, b)
            backend.clean(root)
            finalize(root, plan.options)
            packages = read_installed(root)
            if packages == tuple(current.packages):
                b.say("no updates")
                return BuildResult.of(Status.NO_UPDATES, current, t0, proxy)
            source_date = max(current.source_date, state.source_date)
            m = b.pack_and_commit(backend, root, source_date, state.digest,
                                  lambda: packages, current.plan_digest, tools.result)
            b.say(f"updated: serial {m.serial}")
            return BuildResult.of(Status.UPDATED, m, t0, proxy, b.log.path)
    finally:
        b.close()
