"""``vzpkg``: build, inspect, verify and publish OS template caches."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from vzpkg import __version__
from vzpkg.cli.common import Parser, run_console, run_main

EPILOG = """\
examples:
  vzpkg list                         templates and built caches
  vzpkg show debian-12               the rendered build plan and its digest
  vzpkg build debian-12              build debian-12-<host arch>-minimal
  vzpkg verify debian-12-x86_64-minimal
  vzpkg import rootfs.tar.xz --name mydist-1-x86_64-minimal

software in VEs (vzpkg install --help says more):
  vzpkg install|remove|update|list|info|check-updates CTID... | --all
                         [--jobs N] [--json] [--dry-run]
  vzpkg update --all --security      only the pending security updates
  vzpkg install 101 --set default    what the set 'default' adds to VE 101

Cache names are <distribution>-<release>-<arch>-<set>; the short form
<distribution>-<release> means the host's architecture and the set 'minimal'.

"""


# The modules under vzpkg.cli that register the commands, in --help order.  They are
# imported by name when needed: a command imports its own module only (start-up of
# every command; tests/unit/test_startup_imports.py checks it).
MODULES = ("cmd_meta", "cmd_build", "cmd_cache", "cmd_export", "cmd_mirror", "cmd_matrix")
# command -> the module that registers it (tests/unit/test_cli_commands.py checks it)
COMMANDS = {"list": "cmd_meta", "show": "cmd_meta", "validate": "cmd_meta",
            "schema": "cmd_meta", "build": "cmd_build", "update": "cmd_build",
            "import": "cmd_cache", "verify": "cmd_cache", "remove": "cmd_cache",
            "prune": "cmd_cache", "export": "cmd_export", "publish": "cmd_mirror",
            "pull": "cmd_mirror", "matrix": "cmd_matrix"}
VALUED = ("--workspace", "--cache-dir")
# the commands of vzpkg.cli.cmd_ve (software in VEs: vzpkg install 101 ...); that
# module is imported only when one of these words is given (tests/unit/test_vepkg.py
# checks that the two agree)
VE_COMMANDS = frozenset({"install", "remove", "update", "list", "info", "check-updates"})


def command_module(name: str) -> ModuleType:
    """The module ``vzpkg.cli.<name>`` of :data:`MODULES`, imported now."""
    return importlib.import_module(f"vzpkg.cli.{name}")


def command_of(argv: Sequence[str]) -> str | None:
    """The command named in *argv*, when nothing before it asks for help."""
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help", "--version"):
            return None
        if a in VALUED:
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


class TopParser(Parser):
    """vzpkg's own parser: its epilog (the settings table) is made only for --help."""

    def format_help(self) -> str:
        if self.epilog is None:
            from vzpkg.core.settings_table import settings_help
            self.epilog = EPILOG + settings_help()
        return super().format_help()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given *argv* naming a known command, with that command's module
    only (the others' options are never read: start-up of every command)."""
    p = TopParser(prog="vzpkg", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vzpkg {__version__}")
    p.add_argument("--workspace", metavar="DIR",
                   help="directory with metadata/, hooks/ and caches/ (default: found "
                        "from the current directory)")
    p.add_argument("--cache-dir", metavar="DIR", help="where caches are stored")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    only = COMMANDS.get(command_of(argv) or "") if argv is not None else None
    for module in (only,) if only is not None else MODULES:
        command_module(module).register(sub)
    return p


# Standard modules a command imports through others but does not use: a stand-in
# takes their place in sys.modules and imports them on first use.  For a pull
# (tests/unit/test_startup_imports.py and test_mirror_pull.py check that these stay
# stand-ins; about 6 ms together here):
#   inspect    dataclasses imports it (about 7 ms here: ast, dis, tokenize,
#              linecache) only to write a signature into the docstring of a dataclass
#              that has none; the dataclasses a pull defines all have one
#   copy       dataclasses, for asdict() and astuple() only
#   signal     subprocess, for send_signal(), terminate() and kill() only (its enums
#              of signals cost 1.5 ms); sqv is killed only when a check is abandoned
#   ipaddress  urllib.parse, for URLs with a bracketed host ([::1]) only
#   ntpath     pathlib, for PureWindowsPath only
#   zlib, bz2, lzma  shutil, to list the archive formats it could write
#   weakref    tempfile, for TemporaryDirectory only (a pull uses mkdtemp, mkstemp
#              and TemporaryFile), and copy
#   array      socket, for send_fds() and recv_fds() only
#   struct     base64, for the base85 and ascii85 codecs only
# Only for commands whose threads import nothing.
DEFERRED = {"pull": ("inspect", "copy", "signal", "ipaddress", "ntpath", "zlib", "bz2",
                     "lzma", "weakref", "array", "struct")}


class Deferred(ModuleType):
    """Stands in for the module of its name until an attribute of it is asked for.

    (importlib.util.LazyLoader does not do here: the import statement reads the
    module's ``__spec__``, and on 3.11 any attribute read loads a lazy module.)
    """

    def __getattr__(self, attr: str) -> object:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Make ``import name`` give a stand-in that imports the module when used."""
    if name not in sys.modules:
        sys.modules[name] = Deferred(name)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    for name in DEFERRED.get(command_of(words) or "", ()):
        defer_import(name)
    if not VE_COMMANDS.isdisjoint(words):
        from vzpkg.cli import cmd_ve
        if cmd_ve.is_ve_command(words):     # software in VEs: vzpkg install 101 ...
            return run_main("vzpkg", cmd_ve.build_parser, words)
    return run_main("vzpkg", lambda: build_parser(words), words)


def entry() -> NoReturn:
    """The ``vzpkg`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
