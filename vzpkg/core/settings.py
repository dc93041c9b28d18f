"""Where things are: workspace, configuration files, the cache directory.

Resolution order for the cache directory (first wins):
``--cache-dir``, ``$VZPKG_CACHE_DIR``, ``cache_dir`` in the configuration,
``caches/`` of the workspace, ``/var/lib/vzpkg/caches``.

Configuration files, later ones override earlier ones key by key:
``/etc/vzpkg/vzpkg.yaml`` (or ``$VZPKG_CONFIG``), then ``vzpkg.yaml`` in the
workspace.  Mirror overrides for ``host_mirror()`` live in
``/etc/vzpkg/mirrors.yaml`` and under ``mirrors:`` in either file.

A workspace is a directory with a ``vzpkg.yaml`` file or a ``metadata/``
directory, found by walking up from the current directory or named with
``--workspace`` / ``$VZPKG_WORKSPACE``.  Its ``metadata/`` and ``hooks/`` add to
or override the templates shipped with the package.

Every key of a configuration file and every variable is a row of the settings
table (:mod:`vzpkg.core.settings_table`); a key that is not there, or a value of
the wrong kind, is refused with its file and line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vzpkg.core.errors import ConfigError
from vzpkg.core.settings_table import env_name, file_setting, unknown_key_hint


def _shipped(kind: str) -> Path:
    """Where the shipped *kind* (``metadata`` or ``hooks``) is: inside the installed
    package (a wheel carries them in ``vzpkg/_shipped``), else at the top of the
    checkout this package runs from."""
    package = Path(__file__).resolve().parents[1]
    inside = package / "_shipped" / kind
    return inside if inside.is_dir() else package.parent / kind


SHIPPED_METADATA = _shipped("metadata")
SHIPPED_HOOKS = _shipped("hooks")
SYSTEM_CONFIG = Path("/etc/vzpkg/vzpkg.yaml")
SYSTEM_MIRRORS = Path("/etc/vzpkg/mirrors.yaml")
DEFAULT_CACHE_DIR = Path("/var/lib/vzpkg/caches")
WORKSPACE_FILE = "vzpkg.yaml"


@dataclass(frozen=True)
class Settings:
    """Resolved locations and configuration for one invocation."""

    workspace: Path | None
    cache_dir: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    config_files: tuple[Path, ...] = ()
    template_dirs: tuple[Path, ...] = (SHIPPED_METADATA,)
    hook_dirs: tuple[Path, ...] = (SHIPPED_HOOKS,)

    @property
    def pkg_cache_dir(self) -> Path:
        """Shared download cache for packages, beside the template caches."""
        return self.cache_dir / ".pkgcache"

    @property
    def work_dir(self) -> Path:
        """Scratch area for the trees of temporary VEs.

        ``$VZPKG_WORK_DIR`` or ``work_dir`` in the configuration; else a directory
        in /dev/shm when that is a tmpfs with room to spare (dpkg and rpm install
        about 20 % faster into memory, and only the packed tarball has to reach the
        disk); else ``.work`` in the cache directory.
        """
        env = os.environ.get(env_name("work_dir")) or self.config.get("work_dir")
        if env:
            return Path(str(env))
        return _memory_work_dir() or self.cache_dir / ".work"

    def mirror_overrides(self) -> dict[str, str]:
        """Mirror URLs configured by file; environment is applied by the loader."""
        out: dict[str, str] = {}
        if SYSTEM_MIRRORS.is_file():
            data, _ = _parse_yaml(SYSTEM_MIRRORS)
            out.update({str(k): str(v) for k, v in data.items()})
        mirrors = self.config.get("mirrors") or {}
        if isinstance(mirrors, dict):
            out.update({str(k): str(v) for k, v in mirrors.items()})
        return out


TMPFS_WORK = Path("/dev/shm/vzpkg-work")
TMPFS_MIN_FREE = 4 << 30


def _memory_work_dir() -> Path | None:
    from vzpkg.core import mountinfo
    base = TMPFS_WORK.parent
    try:
        st = os.statvfs(base)
        on_tmpfs = any(m.point == str(base) and m.fstype == "tmpfs"
                       for m in mountinfo.read())
    except OSError:
        return None
    if on_tmpfs and st.f_bavail * st.f_frsize >= TMPFS_MIN_FREE:
        return TMPFS_WORK
    return None


def user_cache_dir() -> Path:
    """Derived data kept per user between runs (schema checks, build plans):
    ``$XDG_CACHE_HOME/vzpkg``, else ``~/.cache/vzpkg``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".cache")
    return Path(base) / "vzpkg"


def find_workspace(start: Path) -> Path | None:
    """The nearest directory at or above *start* that looks like a workspace."""
    for d in (start, *start.parents):
        if (d / WORKSPACE_FILE).is_file() or (d / "metadata").is_dir():
            return d
    return None


def _parse_yaml(path: Path) -> tuple[dict[Any, Any], dict[Any, int]]:
    """The mapping in the YAML file *path*, and the line of each of its keys (kept
    between runs by :mod:`vzpkg.core.configcache`: an unchanged file costs no yaml)."""
    from vzpkg.core.configcache import parsed
    return parsed(path, _parse_yaml_file)


def _parse_yaml_file(path: Path) -> tuple[dict[Any, Any], dict[Any, int]]:
    import yaml  # here: needed only when a configuration file exists
    lines: dict[Any, int] = {}
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        loader.name = str(path)                 # marks name the file, not "<unicode string>"
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
            if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
                for key_node, _ in node.value:     # a key given twice: the last counts
                    if isinstance(key_node, yaml.ScalarNode):
                        key = loader.construct_object(key_node)
                        lines[key] = key_node.start_mark.line + 1
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        line = 1 if node is None else node.start_mark.line + 1
        raise ConfigError(f"{path}:{line}: expected a mapping of settings, got "
                          f"{type(data).__name__}",
                          hint="write one 'key: value' a line")
    return data, lines


def _described(value: object) -> str:
    """*value* for an error message: a scalar as written, else its kind."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_yaml(path: Path) -> dict[str, Any]:
    """The settings in the configuration file *path*, each checked against the table."""
    data, lines = _parse_yaml(path)
    for key, value in data.items():
        where = f"{path}:{lines.get(key, 1)}"
        row = file_setting(key)
        if row is None:
            raise ConfigError(f"{where}: unknown setting {key!r}", hint=unknown_key_hint(key))
        if not row.accepts(value):
            raise ConfigError(f"{where}: {key}: expected {row.expected}, got "
                              f"{_described(value)}",
                              hint=f"{key}: {row.help}".replace("`", ""))
    return data


def _same(a: Path, b: Path) -> bool:
    """Whether *a* is the shipped directory *b* (a checkout used as the workspace)."""
    try:
        return a.samefile(b)
    except OSError:
        return False


def load_settings(
    *,
    workspace: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve workspace, configuration and cache directory."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    ws: Path | None
    if workspace is not None:
        ws = Path(workspace).resolve()
        if not ws.is_dir():
            raise ConfigError(f"workspace {ws} is not a directory",
                              hint="create it, or drop --workspace")
    elif env.get(env_name("workspace")):
        ws = Path(env[env_name("workspace")]).resolve()
    else:
        ws = find_workspace(cwd.resolve())

    files: list[Path] = []
    config: dict[str, Any] = {}
    system_env = env.get(env_name("config"))
    system = Path(system_env) if system_env else SYSTEM_CONFIG
    if system.is_file():
        files.append(system)
    if ws is not None and (ws / WORKSPACE_FILE).is_file():
        files.append(ws / WORKSPACE_FILE)
    for f in files:
        config.update(_read_yaml(f))

    if cache_dir is not None:
        cdir = Path(cache_dir)
    elif env.get(env_name("cache_dir")):
        cdir = Path(env[env_name("cache_dir")])
    elif config.get("cache_dir"):
        base = files[-1].parent if files else cwd
        cdir = base / str(config["cache_dir"])
    elif ws is not None:
        cdir = ws / "caches"
    else:
        cdir = DEFAULT_CACHE_DIR

    tdirs: list[Path] = []
    hdirs: list[Path] = []
    if ws is not None:
        if (ws / "metadata").is_dir() and not _same(ws / "metadata", SHIPPED_METADATA):
            tdirs.append(ws / "metadata")
        if (ws / "hooks").is_dir() and not _same(ws / "hooks", SHIPPED_HOOKS):
            hdirs.append(ws / "hooks")
    tdirs.append(SHIPPED_METADATA)
    hdirs.append(SHIPPED_HOOKS)
    return Settings(
        workspace=ws,
        cache_dir=cdir.absolute(),
        config=config,
        config_files=tuple(files),
        template_dirs=tuple(tdirs),
        hook_dirs=tuple(hdirs),
    )
