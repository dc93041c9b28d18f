"""The settings table: every key of ``vzpkg.yaml`` and every ``VZPKG_*`` variable.

One declarative table (:data:`SETTINGS`) drives the readers: the configuration
reader (:func:`vzpkg.core.settings.load_settings` refuses a key that is not here,
or a value of the wrong kind, with its file and line), the resolution of each
setting (the readers take the variable's name from the table, see :func:`env_name`),
the settings table of README.md (:func:`settings_markdown`, checked by
tests/unit/test_settings.py) and the settings part of ``vzpkg --help``
(:func:`settings_help`).

A setting is taken from its command-line option, else the environment, else the
configuration files (``vzpkg.yaml`` of the workspace over ``/etc/vzpkg/vzpkg.yaml``
or ``$VZPKG_CONFIG``, key by key), else its default.  An empty value
(``cache_dir:``) counts as not given.  The sub-keys of a mapping (``pull:``,
``signing:``) are checked by its reader (:mod:`vzpkg.mirror.config`), from the
``subkeys`` given here.

``VZPKG_SANDBOX_FD`` is not a setting and is left out: the build sandbox
(:mod:`vzpkg.build.sandbox`) passes a file descriptor through it to the tools it
runs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

FAMILY = "<NAME>"  # how an environment variable ending in a name is written


class Kind(StrEnum):
    PATH = "path"
    BOOL = "bool"
    MAPPING = "mapping"
    STRING = "string"
    FLAG = "flag"      # environment only: set to anything but empty or 0


# what a value of each kind is, for error messages
EXPECTED = {
    Kind.PATH: "a path (a string)",
    Kind.BOOL: "true or false",
    Kind.MAPPING: "a mapping of keys to values",
    Kind.STRING: "a string",
    Kind.FLAG: "a string",
}


class Setting(NamedTuple):
    """One setting: its ``vzpkg.yaml`` key, its variable, option and default."""

    key: str                     # the key in vzpkg.yaml (for in_file=False a name only)
    kind: Kind
    help: str                    # one line: what it is
    default: str                 # in words; `code` is markdown, stripped for --help
    env: str | None = None       # VZPKG_... ; a family ends in <NAME>
    option: str | None = None    # the command-line option, if any
    in_file: bool = True         # may be set in vzpkg.yaml
    subkeys: tuple[str, ...] = ()  # a mapping's keys, when they are fixed

    @property
    def env_prefix(self) -> str | None:
        """``VZPKG_MIRROR_`` for the family ``VZPKG_MIRROR_<NAME>``; else None."""
        if self.env is not None and self.env.endswith(FAMILY):
            return self.env[:-len(FAMILY)]
        return None

    def names_env(self, name: str) -> bool:
        """Whether the environment variable *name* is this setting's."""
        prefix = self.env_prefix
        if prefix is not None:
            return name.startswith(prefix) and len(name) > len(prefix)
        return name == self.env

    @property
    def expected(self) -> str:
        """What a value of this setting is, in words."""
        return EXPECTED[self.kind]

    def accepts(self, value: object) -> bool:
        """Whether *value*, read from vzpkg.yaml, is of this setting's kind."""
        if value is None:
            return True                      # `key:` with nothing: not given
        if self.kind is Kind.BOOL:
            return isinstance(value, bool)
        if self.kind is Kind.MAPPING:
            return isinstance(value, dict)
        return isinstance(value, str)


SETTINGS: tuple[Setting, ...] = (
    Setting("cache_dir", Kind.PATH, "where caches are stored (in vzpkg.yaml: relative to the file)",
            "`caches/` of the workspace, else `/var/lib/vzpkg/caches`",
            env="VZPKG_CACHE_DIR", option="--cache-dir DIR"),
    Setting("work_dir", Kind.PATH, "where build trees are made",
            "`/dev/shm/vzpkg-work` when that tmpfs has 4 GiB free, else "
            "`<cache dir>/.work`", env="VZPKG_WORK_DIR"),
    Setting("payload_cache", Kind.BOOL,
            "keep unpacked .deb payloads (`VZPKG_PAYLOAD_CACHE=0` turns it off)",
            "`true`", env="VZPKG_PAYLOAD_CACHE"),
    Setting("mirrors", Kind.MAPPING,
            "mirror URLs by name for the templates (over `/etc/vzpkg/mirrors.yaml`)",
            "the template's own; `host_mirror()` reads the host's apt sources",
            env="VZPKG_MIRROR_" + FAMILY, option="--set mirrors.NAME=URL"),
    Setting("pull", Kind.MAPPING, "template mirrors and trusted keys for `vzpkg pull`",
            "none; `TEMPLATE_MIRRORS` and `TEMPLATE_KEYS` of `vz.conf` are added",
            option="--mirror URL",
            subkeys=("mirrors", "trusted_keys", "timeout", "retries")),
    Setting("signing", Kind.MAPPING, "signing key and keyring for `vzpkg publish`",
            "no key, and the keyring of `$GNUPGHOME`", option="--sign KEYID, --gnupghome DIR",
            subkeys=("key", "gnupghome")),
    Setting("config", Kind.PATH, "the system configuration file",
            "`/etc/vzpkg/vzpkg.yaml`", env="VZPKG_CONFIG", in_file=False),
    Setting("workspace", Kind.PATH, "the workspace: `metadata/`, `hooks/`, `caches/`",
            "the nearest directory up from here with `vzpkg.yaml` or `metadata/`",
            env="VZPKG_WORKSPACE", option="--workspace DIR", in_file=False),
    Setting("variables", Kind.STRING, "template variables",
            "the template's own", env="VZPKG_SET_" + FAMILY, option="--set NAME=VALUE",
            in_file=False),
    Setting("plan_cache", Kind.FLAG,
            "keep build plans and parsed configuration files (`VZPKG_NO_PLAN_CACHE=1` "
            "turns it off)",
            "on, in `plans/` and `config/` of `$XDG_CACHE_HOME/vzpkg`, else of "
            "`~/.cache/vzpkg`",
            env="VZPKG_NO_PLAN_CACHE", in_file=False),
)

_BY_KEY = {s.key: s for s in SETTINGS}
FILE_KEYS = tuple(s.key for s in SETTINGS if s.in_file)


def setting(key: str) -> Setting:
    """The row of *key*; a KeyError is a bug (a reader names a key the table lacks)."""
    return _BY_KEY[key]


def env_name(key: str) -> str:
    """The environment variable of the setting *key* (not a family)."""
    env = setting(key).env
    if env is None or env.endswith(FAMILY):
        raise KeyError(f"setting {key!r} has no single environment variable")
    return env


def file_setting(key: object) -> Setting | None:
    """The row of a top-level key of vzpkg.yaml, or None if it is no such key."""
    s = _BY_KEY.get(key) if isinstance(key, str) else None
    return s if s is not None and s.in_file else None


def unknown_key_hint(key: object) -> str:
    """What to say about a vzpkg.yaml key that is not in the table."""
    import difflib  # here: only when a configuration file is wrong
    known = _BY_KEY.get(key) if isinstance(key, str) else None
    if known is not None:           # a setting that is not set in the file
        ways = [w for w in (known.option, known.env and f"${known.env}") if w]
        return f"{key} is set with {' or '.join(ways)}, not in vzpkg.yaml"
    close = difflib.get_close_matches(str(key), FILE_KEYS, n=1)
    if close:
        return f"did you mean {close[0]!r}? (vzpkg --help lists the settings)"
    return "known settings: " + ", ".join(FILE_KEYS)


def settings_markdown() -> str:
    """The settings table of README.md, one row per setting."""
    rows = ["| setting | `vzpkg.yaml` | environment | option | default |",
            "|---|---|---|---|---|"]
    for s in SETTINGS:
        key = f"`{s.key}:` {s.kind}" if s.in_file else ""
        env = f"`{s.env}`" if s.env else ""
        option = ", ".join(f"`{o.strip()}`" for o in s.option.split(",")) if s.option else ""
        rows.append(f"| {s.help} | {key} | {env} | {option} | {s.default} |")
    return "\n".join(rows) + "\n"


def settings_help(width: int = 79) -> str:
    """The settings for ``vzpkg --help``: name, where it comes from, its default."""
    import textwrap  # here: only for --help
    out = ["settings: the option, else the environment, else vzpkg.yaml (the",
           "workspace's over /etc/vzpkg/vzpkg.yaml, key by key), else the default:"]
    for s in SETTINGS:
        ways = ", ".join(w for w in (s.option, s.env and f"${s.env}") if w)
        head = f"{s.key}: {s.kind}" + (f"  ({ways})" if ways else "") if s.in_file else ways
        out.append(f"  {head}")
        text = f"{s.help}; default: {s.default}".replace("`", "")
        out.extend(f"      {line}" for line in textwrap.wrap(text, width - 6))
    return "\n".join(out) + "\n"
