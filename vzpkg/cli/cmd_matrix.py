"""``vzpkg matrix``: the template × release × arch × set list for CI jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """\
GitHub Actions (one line of JSON, for $GITHUB_OUTPUT):
  echo "matrix=$(vzpkg matrix debian --arch x86_64 --json)" >> "$GITHUB_OUTPUT"
  ...  strategy: {matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}}
GitLab (parallel:matrix for a generated child pipeline):
  vzpkg matrix debian --format gitlab --json
Without --json, one cache name per line.  See examples/ci/ in the source tree.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to *sub*."""
    p = sub.add_parser("matrix", help="list template × release × arch × set for CI jobs",
                       description="List the caches the templates define, as a CI build "
                                   "matrix.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("templates", metavar="TEMPLATE", nargs="*",
                   help="distributions (default: every template)")
    p.add_argument("--release", action="append", default=[], metavar="R",
                   help="only this release (repeatable)")
    p.add_argument("--arch", action="append", default=[], metavar="ARCH",
                   help="only this architecture (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SET",
                   help="only this package set (repeatable)")
    p.add_argument("--format", choices=("github", "gitlab"), default="github",
                   help="shape of the --json output (default: github)")
    p.add_argument("--json", action="store_true",
                   help="print the matrix as one line of JSON on stdout")
    p.set_defaults(func=cmd_matrix)


def cmd_matrix(args: argparse.Namespace) -> int:
    from vzpkg.core.settings import load_settings
    from vzpkg.template.matrix import build_matrix, github, gitlab

    settings = load_settings(workspace=args.workspace, cache_dir=args.cache_dir)
    cells = build_matrix(settings, args.templates, releases=args.release, archs=args.arch,
                         sets=args.sets)
    if args.json:
        doc = github(cells) if args.format == "github" else gitlab(cells)
        sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    else:
        for c in cells:
            print(c.name)
    return 0
