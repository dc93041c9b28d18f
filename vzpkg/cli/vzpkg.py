"""``vzpkg``: build, inspect, verify and publish OS template caches."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from vzpkg import __version__
from vzpkg.cli import cmd_build, cmd_cache, cmd_export, cmd_matrix, cmd_meta, cmd_mirror
from vzpkg.cli.common import Parser, run_console, run_main
from vzpkg.core.settings_table import settings_help

EPILOG = """\
examples:
  vzpkg list                         templates and built caches
  vzpkg show debian-12               the rendered build plan and its digest
  vzpkg build debian-12              build debian-12-<host arch>-minimal
  vzpkg verify debian-12-x86_64-minimal
  vzpkg import rootfs.tar.xz --name mydist-1-x86_64-minimal

Cache names are <distribution>-<release>-<arch>-<set>; the short form
<distribution>-<release> means the host's architecture and the set 'minimal'.

"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzpkg", description=__doc__,
               epilog=EPILOG + settings_help(),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vzpkg {__version__}")
    p.add_argument("--workspace", metavar="DIR",
                   help="directory with metadata/, hooks/ and caches/ (default: found "
                        "from the current directory)")
    p.add_argument("--cache-dir", metavar="DIR", help="where caches are stored")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for module in (cmd_meta, cmd_build, cmd_cache, cmd_export, cmd_mirror, cmd_matrix):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vzpkg", build_parser, argv)


def entry() -> NoReturn:
    """The ``vzpkg`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
