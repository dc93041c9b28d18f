"""``vzpkg list | show | validate | schema``: templates and build plans.

Parsing and printing only; the work is done in :mod:`vzpkg.template`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.cli.common import add_json_flag, emit_json
from vzpkg.core.errors import TemplateError
from vzpkg.core.units import human_size

# Only parsing is done at import time: configuration (yaml), the loader
# (jinja2, jsonschema) and the store are imported by the commands that use them.
if TYPE_CHECKING:
    from vzpkg.core.settings import Settings
    from vzpkg.template.document import TemplateInfo
    from vzpkg.template.model import Plan

SET_HELP = ("override a variable or mirror: NAME=VALUE, mirrors.NAME=URL, "
            "options.NAME=VALUE (repeatable); the environment may also set "
            "VZPKG_MIRROR_<NAME>=URL and VZPKG_SET_<NAME>=VALUE")


def settings_from(args: argparse.Namespace) -> Settings:
    from vzpkg.core.settings import load_settings
    return load_settings(workspace=getattr(args, "workspace", None),
                         cache_dir=getattr(args, "cache_dir", None))


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """--set and --backend, shared with the build commands."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=SET_HELP)
    p.add_argument("--backend", metavar="NAME",
                   help="use this backend instead of the template's (e.g. mmdebstrap)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to *sub*."""
    p = sub.add_parser("list", help="list templates (releases, architectures, sets)",
                       description="List the templates found in the workspace's "
                                   "metadata/ and the shipped ones.")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="show the fully rendered build plan and its digest",
                       description="Render the template for NAME into the build plan "
                                   "that 'vzpkg build NAME' would use.")
    p.add_argument("name", metavar="NAME",
                   help="cache name: dist-release-arch-set, or dist-release")
    add_plan_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check template files",
                       description="Load every template file given (default: all "
                                   "templates) and render every release, architecture "
                                   "and set; one line per file; exit 1 if any fails.")
    p.add_argument("files", nargs="*", metavar="FILE", type=Path)
    add_json_flag(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the template JSON Schema (for editors)")
    p.set_defaults(func=cmd_schema)


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.template.loader import list_templates
    infos = list_templates(settings)
    caches = CacheStore(settings.cache_dir).list()
    if args.json:
        emit_json({"templates": [i.to_json() for i in infos],
                   "cache_dir": str(settings.cache_dir),
                   "caches": [{"name": c.name, "serial": c.serial, "size": c.size,
                               "created": c.manifest.created, "sha256": c.manifest.sha256,
                               "packages": len(c.manifest.packages),
                               "tarball": str(c.tarball)} for c in caches]})
        return 0
    _print_templates(infos)
    print(f"\ncaches in {settings.cache_dir}:")
    if not caches:
        print("  none yet (vzpkg build NAME, vzpkg pull NAME or vzpkg import FILE)")
    for c in caches:
        print(f"  {c.name:<36} serial {c.serial:<4} {human_size(c.size):>10}  "
              f"{c.manifest.created}  {len(c.manifest.packages)} packages")
    return 0


def _print_templates(infos: list[TemplateInfo]) -> None:
    if not infos:
        print("no templates found")
        return
    rows = [("TEMPLATE", "BACKEND", "RELEASES", "ARCHITECTURES", "SETS")]
    for i in infos:
        if i.error:
            rows.append((i.distribution, "-", "BROKEN (vzpkg validate " + str(i.file) + ")",
                         "", ""))
        else:
            rows.append((i.distribution, i.backend, " ".join(i.releases),
                         " ".join(i.architectures), " ".join(i.sets)))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(f"{v:<{widths[c]}}" for c, v in enumerate(r[:4])) + "  " + r[4])


def cmd_show(args: argparse.Namespace) -> int:
    from vzpkg.template.assign import parse_assignments
    from vzpkg.template.plancache import make_plan_cached
    plan = make_plan_cached(args.name, settings_from(args),
                            overrides=parse_assignments(args.sets), backend=args.backend)
    if args.json:
        data = plan.to_json()
        data["template_file"] = str(plan.template_file)
        emit_json(data)
        return 0
    print(format_plan(plan))
    return 0


def format_plan(plan: Plan) -> str:
    lines = [
        f"name:          {plan.name}",
        f"digest:        {plan.digest}",
        f"template:      {plan.template_file}",
        f"backend:       {plan.backend}",
        f"architecture:  {plan.arch} ({plan.target_arch})",
        "repositories:",
    ]
    for r in plan.repositories:
        where = r.url or r.metalink or r.mirrorlist or ""
        kind = "metalink " if r.metalink and not r.url else (
            "mirrorlist " if r.mirrorlist and not r.url else "")
        extra = f" {r.suite} [{' '.join(r.components)}]" if r.suite else ""
        lines.append(f"  {r.name:<12} {kind}{where}{extra}")
    lines.append("keys:")
    lines += [f"  {k.fingerprint}  {k.file.name}" for k in plan.keys]
    lines.append(f"packages ({len(plan.packages)}):")
    lines += _wrap(plan.packages)
    lines.append("scripts:" if plan.scripts else "scripts:       none")
    for s in plan.scripts:
        src = str(s.path) if s.path else f"inline, {len(s.text)} bytes"
        lines.append(f"  {s.stage.value:<13} {src}")
    o = plan.options
    lines.append(f"options:       compression={o.compression.value} "
                 f"trim_docs={str(o.trim_docs).lower()} "
                 f"trim_locales={str(o.trim_locales).lower()} "
                 f"weak_deps={str(o.weak_deps).lower()} variant={o.variant}")
    lines.append("variables:")
    lines += [f"  {k} = {v}" for k, v in plan.variables]
    return "\n".join(lines)


def _wrap(words: tuple[str, ...], width: int = 78) -> list[str]:
    out: list[str] = []
    line = " "
    for w in words:
        if len(line) + len(w) + 1 > width and line.strip():
            out.append(line)
            line = " "
        line += " " + w
    if line.strip():
        out.append(line)
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from vzpkg.template.document import template_files
    from vzpkg.template.loader import validate_file
    files: list[Path] = list(args.files) or list(template_files(settings).values())
    results: list[dict[str, Any]] = []
    failed = 0
    for f in files:
        try:
            n = validate_file(f, settings)
        except TemplateError as exc:
            failed += 1
            results.append({"file": str(f), "ok": False, "error": str(exc),
                            "line": exc.line, "key": exc.key})
            if not args.json:
                print(f"FAIL  {exc}", file=sys.stderr)
            continue
        results.append({"file": str(f), "ok": True, "plans": n})
        if not args.json:
            print(f"ok    {f} ({n} plans)")
    if args.json:
        emit_json({"results": results, "failed": failed})
    elif not files:
        print("no template files found")
    return 1 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from vzpkg.template.schema import schema_text
    sys.stdout.write(schema_text())
    return 0
