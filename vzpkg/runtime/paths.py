"""Where everything of the runtime lives: one root directory, ``VZ_ROOT``.

::

    VZ_ROOT/etc/vz/vz.conf               global settings
    VZ_ROOT/etc/vz/conf/CTID.conf        one VE's configuration
    VZ_ROOT/etc/vz/conf/ve-NAME.conf-sample
    VZ_ROOT/private/CTID                 the VE's files (plain) or upper/work (overlay)
    VZ_ROOT/root/CTID                    where the VE's root is mounted while it runs
    VZ_ROOT/template/cache               caches, OpenVZ's place (beside vzpkg's cache dir)
    VZ_ROOT/shared/SHA256                read-only unpacked caches, the overlay lower dirs
    VZ_ROOT/run/CTID.pid                 host pid and start time of a running VE's init
    VZ_ROOT/run/CTID.live                what set without --save changed in a running VE
    VZ_ROOT/lock/CTID.lck                per-VE lock

``VZ_ROOT`` comes from the environment and defaults to ``/vz``.  As in OpenVZ,
vz.conf may put the VEs elsewhere: ``VE_PRIVATE="/vz/private/$VEID"``,
``VE_ROOT="/vz/root/$VEID"`` (each an absolute path ending in ``/$VEID``) and
``TEMPLATE="/vz/template"`` (caches in its ``cache/``); unset, they are the places
above.

Host-wide names (the VE's cgroup, the host end of its veth pair) are OpenVZ's for
``/vz``: ``vzpkg/CTID`` and ``vethCTID.0``.  Any other root tags them with a short
hash of its path (``vzpkg-TAG/CTID``, ``vTAGCTID``), so VE 101 of a second root never
shares a cgroup or an interface with VE 101 of the first: starting one must not kill
or unplug the other.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import ConfigError, UsageError
from vzpkg.core.shellconf import read_assignments

DEFAULT_ROOT = Path("/vz")
# the directories under VZ_ROOT whose mode is set by VzPaths.ensure
MODES = {"private": 0o700, "root": 0o700, "shared": 0o700, "lock": 0o700, "run": 0o755}
_CTID = re.compile(r"[0-9]{1,9}")   # fullmatch: "$" also matches before a final "\n"
_VEID = re.compile(r"\$(?:VEID|\{VEID\})")


def check_ctid(text: str | int) -> int:
    """A VE id: a positive number, as OpenVZ uses (names are kept in the config)."""
    s = str(text)
    if not _CTID.fullmatch(s) or int(s) == 0:
        raise UsageError(f"invalid CTID {s!r}: expected a positive number such as 101",
                         hint="CTIDs are numbers; 0 is the host")
    return int(s)


@dataclass(frozen=True)
class VzPaths:
    """The layout under one ``VZ_ROOT``."""

    root: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> VzPaths:
        e = os.environ if env is None else env
        return cls(Path(e.get("VZ_ROOT") or DEFAULT_ROOT).absolute())

    @property
    def tag(self) -> str:
        """"" for /vz; else 5 hex digits naming this root in host-wide names (of its
        real path: a root reached through a symlink keeps its names)."""
        real = self.root.resolve()
        if real == DEFAULT_ROOT.resolve():
            return ""
        return hashlib.sha256(str(real).encode()).hexdigest()[:5]

    @property
    def cgroup_prefix(self) -> str:
        """The cgroup directory that holds this root's VEs."""
        return f"vzpkg-{self.tag}" if self.tag else "vzpkg"

    def host_ifname(self, ctid: int) -> str:
        """The host end of the VE's veth pair (at most 15 characters: IFNAMSIZ)."""
        return f"v{self.tag}{ctid}" if self.tag else f"veth{ctid}.0"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "vz"

    @property
    def global_conf(self) -> Path:
        return self.etc / "vz.conf"

    @property
    def conf_dir(self) -> Path:
        return self.etc / "conf"

    @property
    def template_cache(self) -> Path:
        """``TEMPLATE/cache`` (vz.conf's TEMPLATE), else ``VZ_ROOT/template/cache``."""
        tpl = self._setting("TEMPLATE")
        if tpl is None:
            return self.root / "template" / "cache"
        path = Path(tpl)
        if not path.is_absolute() or ".." in path.parts:
            raise ConfigError(f"{self.global_conf}: TEMPLATE={tpl!r} is not an absolute path",
                              hint='write it as TEMPLATE="/vz/template"')
        return path / "cache"

    @property
    def private_base(self) -> Path:
        """The directory of the VEs' private areas (vz.conf's VE_PRIVATE without its
        ``/$VEID``; ``VZ_ROOT/private`` by default)."""
        return self._base("VE_PRIVATE", "private")

    @property
    def root_base(self) -> Path:
        """The directory of the VEs' mount points (vz.conf's VE_ROOT, ``VZ_ROOT/root``)."""
        return self._base("VE_ROOT", "root")

    def _base(self, key: str, default: str) -> Path:
        value = self._setting(key)
        if value is None:
            return self.root / default
        parent, _, last = value.rstrip("/").rpartition("/")
        base = Path(parent or "/")
        if (not _VEID.fullmatch(last) or _VEID.search(parent) or not base.is_absolute()
                or ".." in base.parts or base == Path("/")):
            raise ConfigError(f"{self.global_conf}: {key}={value!r}: expected an absolute "
                              "directory followed by /$VEID",
                              hint=f'write it as {key}="/vz/{default}/$VEID"')
        return base

    def _setting(self, key: str) -> str | None:
        """A value of vz.conf (re-read when the file changes), None when unset or empty."""
        try:
            st = os.stat(self.global_conf)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached: tuple[tuple[int, int, int], dict[str, str]] | None = \
            self.__dict__.get("_vzconf")
        if cached is None or cached[0] != stamp:
            cached = (stamp, read_assignments(self.global_conf))
            object.__setattr__(self, "_vzconf", cached)     # (not a field: eq, hash stay)
        return cached[1].get(key) or None

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def conf(self, ctid: int) -> Path:
        return self.conf_dir / f"{ctid}.conf"

    def sample(self, name: str) -> Path:
        return self.conf_dir / f"ve-{name}.conf-sample"

    def private(self, ctid: int) -> Path:
        return self.private_base / str(ctid)

    def ve_root(self, ctid: int) -> Path:
        return self.root_base / str(ctid)

    def shared(self, sha256: str) -> Path:
        return self.root / "shared" / sha256

    def pidfile(self, ctid: int) -> Path:
        return self.run_dir / f"{ctid}.pid"

    def livefile(self, ctid: int) -> Path:
        """What ``vzctl set`` without --save changed in the running VE (vset.live_config)."""
        return self.run_dir / f"{ctid}.live"

    def ubcfile(self, ctid: int) -> Path:
        """The most seen of a running VE's snapshot beancounters (runtime.ubccount)."""
        return self.run_dir / f"{ctid}.ubc"

    def lockfile(self, ctid: int) -> Path:
        return self.root / "lock" / f"{ctid}.lck"

    def ensure(self) -> None:
        """Create the directories if missing, and set the modes of those that hold
        VE data or host state (also on a root an older version made).

        private, root and shared are 0700: a VE's files and the shared copies hold
        the caches' setuid programs, which no host user may reach.  lock is 0700
        and run 0755 (vzlist and vzctl status read the pid files as any user);
        neither may be writable by others."""
        for d in (self.conf_dir, self.template_cache):
            d.mkdir(parents=True, exist_ok=True)
        for name, mode in MODES.items():
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            if stat.S_IMODE(path.stat().st_mode) != mode:
                path.chmod(mode)
        for key, base in (("VE_PRIVATE", self.private_base), ("VE_ROOT", self.root_base)):
            if base.parent == self.root and base.name in MODES:
                continue                # one of the above
            if not base.exists():
                base.parent.mkdir(parents=True, exist_ok=True)
                base.mkdir(mode=0o700, exist_ok=True)
            st = base.lstat()
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or stat.S_IMODE(st.st_mode) & 0o077):
                raise ConfigError(f"{self.global_conf}: {key}: {base} must be a directory "
                                  "of root's that only root can enter (it holds the VEs' "
                                  "files and their setuid programs)",
                                  hint=f"chmod 700 {base}, or give {key} a directory of "
                                       "its own")

    def ctids(self) -> list[int]:
        """Every VE that has a configuration file, in order."""
        out: list[int] = []
        if self.conf_dir.is_dir():
            for p in self.conf_dir.glob("*.conf"):
                if _CTID.fullmatch(p.stem) and int(p.stem) > 0:
                    out.append(int(p.stem))
        return sorted(out)
