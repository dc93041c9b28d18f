"""Where to pull from and whom to trust: :func:`mirror_config`.

Two sources, merged (mirrors in order, duplicates dropped; keys united):

* the vzpkg configuration (``/etc/vzpkg/vzpkg.yaml``, the workspace's
  ``vzpkg.yaml``)::

      pull:
        mirrors: [https://templates.example.org/vz]
        trusted_keys:
          - {file: keys/mirror.asc, fingerprint: 0123...40 hex}
        timeout: {connect: 10, read: 30}     # seconds; or one number for both
        retries: 3                           # resumed attempts per mirror
      signing:                               # for vzpkg publish
        key: KEYID
        gnupghome: ~/.gnupg

  Relative key files are relative to the configuration file that names them.

* the runtime's global ``VZ_ROOT/etc/vz/vz.conf`` (``VZ_ROOT`` defaults to
  ``/vz``), as OpenVZ hosts keep it::

      TEMPLATE_MIRRORS="https://a.example/vz https://b.example/vz"
      TEMPLATE_KEYS="/etc/vz/keys/mirror.asc:0123...40 hex"

  Relative key files are relative to ``VZ_ROOT/etc/vz``.  The file is read
  with the shared reader of such files (:mod:`vzpkg.core.shellconf`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from vzpkg.core.errors import ConfigError, GpgError
from vzpkg.core.pgpkeys import normalize_fingerprint
from vzpkg.core.settings import Settings
from vzpkg.core.settings_table import setting
from vzpkg.core.shellconf import read_assignments

DEFAULT_VZ_ROOT = Path("/vz")
VZ_CONF = Path("etc/vz/vz.conf")


class TrustedKey(NamedTuple):
    """An armored public key file and the fingerprint pinned for it."""

    file: Path
    fingerprint: str


class MirrorConfig(NamedTuple):
    """The mirrors to pull from, the keys to trust, timeouts, the signing key."""

    mirrors: tuple[str, ...] = ()
    trusted_keys: tuple[TrustedKey, ...] = ()
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    signing_key: str | None = None
    gnupghome: Path | None = None

    def with_mirrors(self, mirrors: tuple[str, ...]) -> MirrorConfig:
        return MirrorConfig(tuple(check_mirror_url(m, where="--mirror") for m in mirrors),
                            self.trusted_keys, self.connect_timeout, self.read_timeout,
                            self.retries, self.signing_key, self.gnupghome)


def check_mirror_url(url: str, *, where: str) -> str:
    """An http(s) base URL, returned with exactly one trailing slash.  A blank or a
    control character is refused: urlsplit would drop a line break, not the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment or not url.isprintable() or " " in url:
        raise ConfigError(f"{where}: mirror {url!r} is not an http:// or https:// URL",
                          hint="give the URL of the directory that holds index.json")
    return url.rstrip("/") + "/"


def vz_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env["VZ_ROOT"]) if env.get("VZ_ROOT") else DEFAULT_VZ_ROOT


def _config_base(settings: Settings) -> Path:
    return settings.config_files[-1].parent if settings.config_files else Path.cwd()


def _seconds(value: object, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _known_subkeys(key: str, value: Mapping[Any, Any], where: str) -> None:
    """Refuse a key of the mapping *value* (the setting *key*) the settings table lacks."""
    known = setting(key).subkeys
    unknown = set(value) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}",
                          hint=f"known keys: {', '.join(known)}")


def _from_settings(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"mirrors": [], "keys": []}
    pull = settings.config.get("pull") or {}
    where = "vzpkg configuration: pull"
    if not isinstance(pull, Mapping):
        raise ConfigError(f"{where}: expected a mapping with mirrors and trusted_keys")
    _known_subkeys("pull", pull, where)
    mirrors = pull.get("mirrors") or []
    if not isinstance(mirrors, list):
        raise ConfigError(f"{where}.mirrors: expected a list of URLs")
    out["mirrors"] = [check_mirror_url(str(m), where=f"{where}.mirrors[{i}]")
                      for i, m in enumerate(mirrors)]
    keys = pull.get("trusted_keys") or []
    if not isinstance(keys, list):
        raise ConfigError(f"{where}.trusted_keys: expected a list of {{file, fingerprint}}")
    base = _config_base(settings)
    for i, k in enumerate(keys):
        w = f"{where}.trusted_keys[{i}]"
        if not isinstance(k, Mapping) or "file" not in k or "fingerprint" not in k:
            raise ConfigError(f"{w}: expected {{file: PATH, fingerprint: 40 HEX}}")
        path = Path(os.path.expanduser(str(k["file"])))
        out["keys"].append(TrustedKey(base / path,
                                      _pinned(str(k["fingerprint"]), f"{w}.fingerprint")))
    timeout = pull.get("timeout")
    if isinstance(timeout, Mapping):
        if "connect" in timeout:
            out["connect"] = _seconds(timeout["connect"], where=f"{where}.timeout.connect")
        if "read" in timeout:
            out["read"] = _seconds(timeout["read"], where=f"{where}.timeout.read")
    elif timeout is not None:
        out["connect"] = out["read"] = _seconds(timeout, where=f"{where}.timeout")
    if "retries" in pull:
        r = pull["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"{where}.retries: expected a whole number >= 0, got {r!r}")
        out["retries"] = r
    signing = settings.config.get("signing") or {}
    if not isinstance(signing, Mapping):
        raise ConfigError("vzpkg configuration: signing: expected a mapping with key, "
                          "gnupghome")
    _known_subkeys("signing", signing, "vzpkg configuration: signing")
    if signing.get("key"):
        out["signing_key"] = str(signing["key"])
    if signing.get("gnupghome"):
        out["gnupghome"] = base / os.path.expanduser(str(signing["gnupghome"]))
    return out


def _pinned(fpr: str, where: str) -> str:
    """A pinned fingerprint, normalized; a ConfigError naming the setting if it is
    not 40 hex digits."""
    try:
        return normalize_fingerprint(fpr)
    except GpgError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def _from_vz_conf(root: Path) -> dict[str, Any]:
    path = root / VZ_CONF
    conf = read_assignments(path)
    mirrors = [check_mirror_url(u, where=f"{path}: TEMPLATE_MIRRORS")
               for u in (conf.get("TEMPLATE_MIRRORS") or "").split()]
    keys = []
    for item in (conf.get("TEMPLATE_KEYS") or "").split():
        file, sep, fpr = item.rpartition(":")
        if not sep or not file:
            raise ConfigError(f"{path}: TEMPLATE_KEYS: {item!r} is not FILE:FINGERPRINT")
        keys.append(TrustedKey(path.parent / file,
                               _pinned(fpr, f"{path}: TEMPLATE_KEYS {item!r}")))
    return {"mirrors": mirrors, "keys": keys}


def mirror_config(settings: Settings, *, root: Path | None = None,
                  env: Mapping[str, str] | None = None) -> MirrorConfig:
    """The merged pull/publish configuration (see the module docstring)."""
    mine = _from_settings(settings)
    vz = _from_vz_conf(root if root is not None else vz_root(env))
    mirrors = list(dict.fromkeys([*mine["mirrors"], *vz["mirrors"]]))
    keys = list(dict.fromkeys([*mine["keys"], *vz["keys"]]))
    return MirrorConfig(
        mirrors=tuple(mirrors), trusted_keys=tuple(keys),
        connect_timeout=mine.get("connect", 10.0), read_timeout=mine.get("read", 30.0),
        retries=mine.get("retries", 3), signing_key=mine.get("signing_key"),
        gnupghome=mine.get("gnupghome"))

