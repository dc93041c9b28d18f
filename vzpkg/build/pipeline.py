"""Build and update caches: the pipeline from a Plan to a committed cache.

A build is a list of named steps (:attr:`_NewCache.STEPS`, :attr:`_Update.STEPS`)
run in order by one runner (:meth:`_Build.run`), which writes each step's time
to the build log (``step bootstrap: 41.20 s``) and names the step in a
BuildError that leaves it (``bootstrap: build step 'mmdebstrap' failed: ...``).
A step may end the build early (up to date, no updates); a script step runs
only if the plan has that script.  ``vzpkg build``:

    keys ─► repo-state (up to date? stop) ─► pre-cache (host) ─► bootstrap
         ─► post-install (in the VE) ─► finalize ─► post-cache (host) ─► pack ─► store

``vzpkg update``:

    find-cache ─► keys ─► repo-state ─► unpack ─► pre-update (in the VE) ─► upgrade
         ─► post-update (in the VE) ─► finalize (no package changed? stop) ─► pack ─► store

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from vzpkg import __version__
from vzpkg.build.backends import Backend, BuildContext, RepoState, get_backend
from vzpkg.build.buildve import (
    BuildLog,
    BuildVE,
    StartedScript,
    close_work,
    open_work,
    run_host_script,
)
from vzpkg.build.finalize import finalize
from vzpkg.build.hookenv import plan_env
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

if TYPE_CHECKING:   # vzpkg.archive is loaded beside the build (_preload_archive)
    from vzpkg.archive import PackResult

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


B = TypeVar("B", bound="_Build")


@dataclass(frozen=True)
class Step(Generic[B]):
    """One named step of a build.  *run* returns a result to end the build there
    (up to date, no updates, done), else None for the next step."""

    name: str
    run: Callable[[B], BuildResult | None]
    script: ScriptStage | None = None   # a step that runs only if the plan has it


class _Build:
    """State of one build or update of one cache, and the runner of its steps."""

    proxy: CachingProxy           # the package cache's proxy, while the steps run
    held: contextlib.ExitStack    # what a step leaves open for later ones
    keyring_file: Path
    state: RepoState
    source_date: int
    staged: Path
    packed: PackResult

    def __init__(self, plan: Plan, settings: Settings, *, t0: float, offline: bool,
                 progress: Progress, verbose: Callable[[str], None] | None) -> None:
        self.t0 = t0
        self.backend_cls = get_backend(plan.backend)
        self.plan = plan
        self.settings = settings
        self.offline = offline
        self.progress = progress
        self.store = CacheStore(settings.cache_dir)
        self.work = open_work(settings.work_dir, plan.name)
        self.root = self.work / "root"
        self.logs = settings.cache_dir / ".logs"
        self.log = BuildLog(self.logs / f"{plan.name}.log", echo=verbose)
        self.log.path.write_text(f"vzpkg {__version__}: {plan.name} digest {plan.digest}\n")
        self.tasks: list[_Task[object]] = []
        self.closers: list[Callable[[], None]] = []
        self.sandbox = Sandbox()      # the build's network namespace, made when needed
        self.step = ""                # the step running

    def run(self: B, steps: Sequence[Step[B]]) -> BuildResult:
        """Run *steps* in order, holding the cache's lock and the package proxy;
        each is logged with its time, and a BuildError out of one names it."""
        try:
            with self.store.lock(self.plan.name), \
                    CachingProxy(self.settings.pkg_cache_dir, offline=self.offline) as proxy, \
                    contextlib.ExitStack() as self.held:
                self.proxy = proxy
                for step in steps:
                    if step.script is None or self.plan.script(step.script):
                        result = self._run_step(step)
                        if result is not None:
                            return result
            raise AssertionError(f"no step of {[s.name for s in steps]} ended the build")
        finally:
            self.close()

    def _run_step(self: B, step: Step[B]) -> BuildResult | None:
        self.step = step.name
        t = time.monotonic()
        try:
            result = step.run(self)
        except BaseException as exc:
            if isinstance(exc, BuildError):
                exc.in_step(step.name)
            with contextlib.suppress(OSError):       # the step's own error wins
                self.mark(f"step {step.name}: failed after {time.monotonic() - t:.2f} s")
            raise
        self.mark(f"step {step.name}: {time.monotonic() - t:.2f} s")
        return result

    def mark(self, line: str) -> None:
        """A line for the log, and for the verbose output."""
        self.log.write(line)
        if self.log.echo is not None:
            self.log.echo(line)

    def later(self, fn: Callable[[], T]) -> _Task[T]:
        """Run *fn* beside the build; joined by close() at the latest."""
        task = _Task(fn)
        self.tasks.append(task)   # type: ignore[arg-type]
        return task

    def say(self, msg: str) -> None:
        """Progress within the step running: ``<step>: <msg>``."""
        self.end(f"{self.step}: {msg}")

    def end(self, msg: str) -> None:
        """The build's last progress line (done, up to date ...)."""
        self.log.write(f"== {msg}")
        self.progress(self.plan.name, msg)

    def keys(self) -> None:
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
            self.keyring_file = dest
            return
        except ParseError:
            pass    # a key file this reader does not understand: let gpg do it
        kr = Keyring()
        try:
            fprs = [kr.import_pinned(k.armored, k.fingerprint, source=str(k.file))
                    for k in self.plan.keys]
            self.keyring_file = kr.export_binary(fprs, dest)
        finally:
            self.later(kr.close)

    def context(self, running: Callable[[], None] = lambda: None) -> BuildContext:
        return BuildContext(plan=self.plan, pkg_cache=self.settings.pkg_cache_dir,
                            proxy=self.proxy, work=self.work, keyring=self.keyring_file,
                            log=self.log, offline=self.offline, running=running,
                            payloads=payloads_enabled(os.environ, self.settings.config),
                            sandbox=self.sandbox)

    def missing(self) -> None:
        """Refuse what an offline build could not find in the package cache."""
        if self.proxy.stats.missing:
            raise BuildError("offline", "not in the package cache: "
                             + ", ".join(self.proxy.stats.missing[:5]),
                             log=str(self.log.path),
                             hint="build once without --offline to fill the package cache")

    def pack(self) -> None:
        """Pack the tree into a staged file of the store (removed unless committed)."""
        from vzpkg import archive  # loaded by _preload_archive by now, as a rule
        comp = self.plan.options.compression
        self.staged = self.store.staging(self.plan.name, comp)
        self.held.callback(self.staged.unlink, missing_ok=True)
        self.say("packing the tree")
        self.packed = archive.pack(self.root, self.staged, source_date=self.source_date,
                                   compression=comp)

    def commit(self, backend: Backend, packages: tuple[InstalledPackage, ...],
               plan_digest: str | None, tools: dict[str, str]) -> Manifest:
        """Commit the packed tree with its manifest."""
        p, res, comp = self.plan, self.packed, self.plan.options.compression
        manifest = Manifest(
            name=p.name, distribution=p.distribution, release=p.release, arch=p.arch,
            set_name=p.set_name, serial=self.store.next_serial(p.name),
            plan_digest=plan_digest, repo_digest=self.state.digest,
            source_date=self.source_date, backend=backend.name,
            tools={"vzpkg": __version__, **tools}, packages=packages,
            file_count=res.file_count, unpacked_size=res.unpacked_size,
            tarball=p.name + comp.suffix, compression=comp.value,
            size=res.compressed_size, sha256=res.sha256, signature=None,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.store.commit(p.name, self.staged, manifest)
        return manifest

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


class _NewCache(_Build):
    """``vzpkg build``: the plan's cache made from nothing (or found up to date)."""

    backend: Backend
    installed: _Task[tuple[InstalledPackage, ...]]

    def __init__(self, plan: Plan, settings: Settings, *, force: bool,
                 env: Mapping[str, str], **kw: Any) -> None:
        super().__init__(plan, settings, **kw)
        self.force = force
        self.env = env
        self.tools: list[_Task[dict[str, str]]] = []
        self.ahead: list[StartedScript] = []

    def beside(self) -> None:
        """Once the package manager runs: load the packer, ask the tool versions,
        and (where the backend allows) make the post-install script's VE."""
        if self.tools:
            return
        _preload_archive()
        self.tools.append(self.later(self.backend.tool_versions))
        script = self.plan.script(ScriptStage.POST_INSTALL)
        if script and self.backend.ve_ahead:
            with contextlib.suppress(BuildError, OSError):   # then it is made when needed
                self.ahead.append(StartedScript(self.root, self.log, script,
                                                plan_env(self.plan, None), self.sandbox))
                self.closers.append(self.ahead[0].stop)

    def repo_state(self) -> BuildResult | None:
        """Start the backend, verify the repositories' metadata; stop here if the
        newest cache has this plan and this repository state (unless --force)."""
        self.backend = self.backend_cls(self.context(self.beside))
        self.closers.append(self.backend.close)
        current = self.store.manifest(self.plan.name)
        unchanged = (not self.force and current is not None
                     and current.plan_digest == self.plan.digest)
        if not unchanged:
            self.backend.prestart(self.root)    # a build is likely: let it start early
        self.say("checking repositories")
        self.state = self.backend.repo_state()
        if unchanged and current is not None and current.repo_digest == self.state.digest:
            self.end("up to date")
            return BuildResult.of(Status.UP_TO_DATE, current, self.t0, self.proxy)
        self.source_date = _source_date(self.env, self.state.source_date)
        return None

    def host_script(self, stage: ScriptStage) -> None:
        script = self.plan.script(stage)
        assert script is not None           # the step runs only if there is one
        self.say("running the script on the host")
        run_host_script(script, plan_env(self.plan, self.root), self.log, self.work)

    def pre_cache(self) -> None:
        self.host_script(ScriptStage.PRE_CACHE)

    def bootstrap(self) -> None:
        self.say(f"bootstrapping with {self.plan.backend}")
        self.backend.bootstrap(self.root)
        self.beside()            # if the backend did not say when its work began
        self.missing()

    def post_install(self) -> None:
        script = self.plan.script(ScriptStage.POST_INSTALL)
        assert script is not None
        self.say("running the script in the VE")
        with BuildVE(self.root, self.log, self.sandbox) as ve:
            ve.run_script(script, plan_env(self.plan, None), *self.ahead)

    def finalize_tree(self) -> None:
        self.say("cleaning the tree")
        self.backend.clean(self.root)
        finalize(self.root, self.plan.options)

    def post_cache(self) -> None:
        self.host_script(ScriptStage.POST_CACHE)

    def pack_tree(self) -> None:
        self.installed = self.later(lambda: read_installed(self.root))  # read while packing
        self.pack()

    def store_cache(self) -> BuildResult:
        m = self.commit(self.backend, self.installed.result(), self.plan.digest,
                        self.tools[0].result())
        self.end(f"done: serial {m.serial}, {len(m.packages)} packages")
        return BuildResult.of(Status.BUILT, m, self.t0, self.proxy, self.log.path)

    STEPS: ClassVar[tuple[Step[_NewCache], ...]] = (
        Step("keys", _Build.keys),
        Step("repo-state", repo_state),
        Step("pre-cache", pre_cache, ScriptStage.PRE_CACHE),
        Step("bootstrap", bootstrap),
        Step("post-install", post_install, ScriptStage.POST_INSTALL),
        Step("finalize", finalize_tree),
        Step("post-cache", post_cache, ScriptStage.POST_CACHE),
        Step("pack", pack_tree),
        Step("store", store_cache),
    )


class _Update(_Build):
    """``vzpkg update``: the newest cache upgraded in a VE, committed again only if
    a package changed."""

    backend: Backend
    current: Manifest
    tarball: Path
    tools: _Task[dict[str, str]]
    in_ve: contextlib.ExitStack     # the VE of the update's scripts, left by finalize
    ve: BuildVE
    packages: tuple[InstalledPackage, ...]

    def find_cache(self) -> None:
        current, tarball = self.store.manifest(self.plan.name), self.store.tarball(self.plan.name)
        if current is None or tarball is None:
            raise VzError(f"there is no cache {self.plan.name} to update",
                          hint=f"build it first: vzpkg build {self.plan.name}")
        self.current, self.tarball = current, tarball

    def repo_state(self) -> None:
        self.backend = self.backend_cls(self.context())
        self.tools = self.later(self.backend.tool_versions)
        self.say("checking repositories")
        self.state = self.backend.repo_state()

    def unpack(self) -> None:
        self.say("unpacking the cache")
        from vzpkg import archive
        archive.unpack(self.tarball, self.root)
        self.in_ve = self.held.enter_context(contextlib.ExitStack())
        self.ve = self.in_ve.enter_context(BuildVE(self.root, self.log, self.sandbox))

    def ve_script(self, stage: ScriptStage) -> None:
        script = self.plan.script(stage)
        assert script is not None           # the step runs only if there is one
        self.say("running the script in the VE")
        self.ve.run_script(script, plan_env(self.plan, None))

    def pre_update(self) -> None:
        self.ve_script(ScriptStage.PRE_UPDATE)

    def upgrade(self) -> None:
        self.say("upgrading packages")
        self.backend.update(self.ve)

    def post_update(self) -> None:
        self.ve_script(ScriptStage.POST_UPDATE)

    def finalize_tree(self) -> BuildResult | None:
        """Leave the VE, clean the tree; stop here if no package changed."""
        self.in_ve.close()
        self.missing()
        self.say("cleaning the tree")
        self.backend.clean(self.root)
        finalize(self.root, self.plan.options)
        self.packages = read_installed(self.root)
        if self.packages == tuple(self.current.packages):
            self.end("no updates")
            return BuildResult.of(Status.NO_UPDATES, self.current, self.t0, self.proxy)
        self.source_date = max(self.current.source_date, self.state.source_date)
        return None

    def store_cache(self) -> BuildResult:
        m = self.commit(self.backend, self.packages, self.current.plan_digest,
                        self.tools.result())
        self.end(f"updated: serial {m.serial}")
        return BuildResult.of(Status.UPDATED, m, self.t0, self.proxy, self.log.path)

    STEPS: ClassVar[tuple[Step[_Update], ...]] = (
        Step("find-cache", find_cache),
        Step("keys", _Build.keys),
        Step("repo-state", repo_state),
        Step("unpack", unpack),
        Step("pre-update", pre_update, ScriptStage.PRE_UPDATE),
        Step("upgrade", upgrade),
        Step("post-update", post_update, ScriptStage.POST_UPDATE),
        Step("finalize", finalize_tree),
        Step("pack", _Build.pack),
        Step("store", store_cache),
    )


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
    """Build *plan* into the cache store (or report that it is up to date): the
    steps of :attr:`_NewCache.STEPS`."""
    t0 = time.monotonic()
    b = _NewCache(plan, settings, force=force, env=os.environ if env is None else env,
                  t0=t0, offline=offline, progress=progress, verbose=verbose)
    return b.run(b.STEPS)


def update(plan: Plan, settings: Settings, *, offline: bool = False,
           progress: Progress = _nothing, verbose: Callable[[str], None] | None = None
           ) -> BuildResult:
    """Unpack the newest cache, upgrade it in a temporary VE, repack only if a
    package changed: the steps of :attr:`_Update.STEPS`."""
    _preload_archive()
    t0 = time.monotonic()
    b = _Update(plan, settings, t0=t0, offline=offline, progress=progress, verbose=verbose)
    return b.run(b.STEPS)
