"""Package-manager backends, found by name.

A backend declares itself in one line and registers through
``__init_subclass__``::

    class Debootstrap(Backend, name="debootstrap", family="deb"): ...

and has a line in ``BACKENDS``, so that finding it imports only its module.
Shared logic lives here once; a backend is mostly a table of commands.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vzpkg.build.sandbox import Sandbox
from vzpkg.core.errors import BuildError, VzError
from vzpkg.template.model import BACKEND_FAMILIES, Plan

if TYPE_CHECKING:
    from vzpkg.build.buildve import BuildLog, BuildVE
    from vzpkg.build.pkgcache import CachingProxy
    from vzpkg.core.settings import Settings


@dataclass(frozen=True)
class RepoState:
    """What the repositories looked like: identifies the package universe.

    ``digest`` is sha256 over the verified metadata files (Release / repomd);
    ``source_date`` is the newest of their dates (seconds since the epoch).
    """

    digest: str
    source_date: int
    files: tuple[tuple[str, str], ...] = ()   # (url, sha256) per metadata file

    @classmethod
    def of(cls, files: Iterable[tuple[str, str]], source_date: int) -> RepoState:
        """The state of metadata *files*, (url, sha256) in the repositories'
        order: the digest is sha256 over their "url sha256" lines joined by
        newlines.  Stored manifests compare against it: it must not change."""
        pairs = tuple(files)
        digest = hashlib.sha256("\n".join(f"{u} {h}" for u, h in pairs).encode()).hexdigest()
        return cls(digest=digest, source_date=source_date, files=pairs)


@dataclass(frozen=True)
class BuildContext:
    """What a backend gets besides the plan."""

    plan: Plan
    pkg_cache: Path          # shared download cache (vzpkg.build.pkgcache layout)
    proxy: CachingProxy      # serves pkg_cache to package managers on 127.0.0.1
    work: Path               # private scratch directory for this build
    keyring: Path            # binary keyring with exactly the plan's pinned keys
    log: BuildLog
    offline: bool = False
    # called when the package manager has begun its real work: what the build
    # does beside it starts then, not while the package manager is starting up
    running: Callable[[], None] = lambda: None
    # whether the backend may use the unpacked-payload cache (vzpkg.build.payloads)
    payloads: bool = False
    # where package code runs: the build's network namespace and sandboxes
    sandbox: Sandbox = field(default_factory=Sandbox)


class Backend(ABC):
    """One package manager."""

    registry: ClassVar[dict[str, type[Backend]]] = {}
    name: ClassVar[str]
    family: ClassVar[str]                    # "deb" or "rpm"
    tools: ClassVar[tuple[str, ...]] = ()    # host commands it needs
    # whether the post-install VE's namespaces and mount points may be made while
    # the package manager still works on the root (mmdebstrap wants it empty)
    ve_ahead: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str | None = None, family: str | None = None,
                          **kw: object) -> None:
        super().__init_subclass__(**kw)
        if family is not None:
            cls.family = family
        if name is not None:        # intermediate base classes give no name
            cls.name = name
            Backend.registry[name] = cls
            BACKEND_FAMILIES.setdefault(name, cls.family)

    @classmethod  # noqa: B027 (an optional hook)
    def start_early(cls, plan: Plan, settings: Settings, *, force: bool) -> None:
        """Start what is slow to start (an interpreter, say) as soon as the plan is
        known, before the build machinery loads; the build takes it over."""

    @classmethod  # noqa: B027 (an optional hook)
    def stop_early(cls) -> None:
        """Stop what :meth:`start_early` started and no build took."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.plan = ctx.plan

    @abstractmethod
    def repo_state(self) -> RepoState:
        """Fetch and verify the repositories' signed metadata."""

    @abstractmethod
    def bootstrap(self, root: Path) -> None:
        """Install the plan's packages into the empty directory *root*."""

    @abstractmethod
    def update(self, ve: BuildVE) -> None:
        """Upgrade every package inside an unpacked cache (``vzpkg update``).
        Whether anything changed is decided by the caller from the package list."""

    @abstractmethod
    def clean(self, root: Path) -> None:
        """Remove package-manager caches and lists from *root* (finalize)."""

    def tool_versions(self) -> dict[str, str]:
        """Versions of the host tools used, for the manifest."""
        return {}

    def prestart(self, root: Path) -> None:  # noqa: B027 (optional hook)
        """A bootstrap of *root* is likely: start early whatever it will wait for.
        The build may still turn out to be up to date; :meth:`close` follows."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Stop what :meth:`prestart` started and the build did not use."""

    def fail(self, step: str, message: str, hint: str | None = None) -> BuildError:
        return BuildError(step, message, log=str(self.ctx.log.path), hint=hint)


# name -> (module in this package, family).  Importing every backend to learn
# its name costs ~25 ms (email, sqlite3, xml.etree...) that a build of one
# backend does not need; a unit test keeps this table and the classes in step.
BACKENDS: dict[str, str] = {      # name -> the module that defines it
    "debootstrap": "debootstrap",
    "mmdebstrap": "mmdebstrap",
    "dnf": "dnf",
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as *name*, importing only its module."""
    if name in BACKENDS:
        importlib.import_module(f"{__name__}.{BACKENDS[name]}")
    try:
        return Backend.registry[name]
    except KeyError:
        known = ", ".join(backend_names()) or "none"
        raise VzError(f"unknown backend {name!r}", hint=f"known backends: {known}") from None


def backend_families() -> dict[str, str]:
    """Every known backend name -> its family ("deb" or "rpm"), importing none.
    Classes registered outside the table (a test's, say) count too."""
    return dict(BACKEND_FAMILIES)


def backend_names() -> list[str]:
    return sorted(backend_families())
