"""vzpkg build / update: parsing and output only (the work is in vzpkg.build.pipeline)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vzpkg.cli.cmd_meta import add_plan_args, settings_from
from vzpkg.cli.common import add_json_flag, emit_json
from vzpkg.core.errors import BuildError, UsageError, VzError
from vzpkg.core.units import human_size

if TYPE_CHECKING:   # the build machinery is imported only when a build runs
    from vzpkg.build import pipeline as builder
    from vzpkg.core.settings import Settings

BUILD_EPILOG = """\
examples:
  vzpkg build debian-12                 debian-12-<host arch>-minimal
  vzpkg build debian-12-x86_64-default --backend mmdebstrap
  vzpkg build --all --jobs 2 --json     every shipped template, a JSON summary
  vzpkg build debian-12 --offline       only from the shared package cache

A build whose plan digest and repository state match the newest cache does
nothing ("up to date") unless --force.  The previous cache is kept as -old.
The build log (<cache dir>/.logs/NAME.log) has the time of each step.
"""


class BuildHelp(argparse.RawDescriptionHelpFormatter):
    """``vzpkg build --help``: the epilog, then the scripts' environment rendered
    from its table (vzpkg.build.hookenv), loaded only when the help is shown."""

    def add_text(self, text: str | None) -> None:
        super().add_text(text)
        if text is BUILD_EPILOG:
            from vzpkg.build.hookenv import hookenv_text
            super().add_text(hookenv_text())


class Reporter:
    """Progress: a live line on a terminal, plain lines otherwise, nothing for --json
    (JSON goes to stdout, progress always to stderr)."""

    def __init__(self, quiet: bool) -> None:
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, name: str, msg: str) -> None:
        with self.lock:
            stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
            if self.tty:
                sys.stderr.write(f"\r\033[K{stamp} {name}: {msg}")
                if msg.startswith(("done", "up to date", "no updates", "updated")):
                    sys.stderr.write("\n")
            else:
                sys.stderr.write(f"{stamp} {name}: {msg}\n")
            sys.stderr.flush()

    def line(self, text: str) -> None:
        with self.lock:
            sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")


def _run(args: argparse.Namespace, work: Callable[..., builder.BuildResult],
         early: Callable[[Any, Settings], None] | None = None) -> int:
    """Make the plans (from the plan cache when their inputs are unchanged), give
    each to *early* (before the build machinery is even imported), then to *work*."""
    from vzpkg.template.assign import parse_assignments
    from vzpkg.template.plancache import make_plan_cached

    settings = settings_from(args)
    names: list[str] = list(args.names)
    if getattr(args, "all", False):
        from vzpkg.template.loader import all_plan_names
        names += all_plan_names(settings)
    if not names:
        raise UsageError("name at least one cache (e.g. debian-12) or use --all")
    overrides = parse_assignments(args.sets)
    plans = [make_plan_cached(n, settings, overrides=overrides, backend=args.backend)
             for n in dict.fromkeys(names)]
    if early is not None and len(plans) == 1:
        early(plans[0], settings)
    from vzpkg.build import pipeline as builder
    rep = Reporter(quiet=args.json)
    verbose = rep.line if args.verbose else None

    def one(plan: Any) -> builder.BuildResult | VzError:
        try:
            return work(plan, settings, progress=rep, verbose=verbose)
        except VzError as exc:
            if len(plans) > 1:  # a single build's error is the command's own, shown once
                rep.line(f"{plan.name}: error: {exc}")
            return exc

    jobs = max(1, args.jobs)
    if jobs == 1 or len(plans) == 1:
        results = [one(p) for p in plans]
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, plans))
    failed = [r for r in results if isinstance(r, VzError)]
    if args.json:
        emit_json({"results": [r.to_json() if isinstance(r, builder.BuildResult)
                               else _failure(p.name, r)
                               for p, r in zip(plans, results, strict=True)],
                   "failed": len(failed)})
    else:
        for p, r in zip(plans, results, strict=True):
            if isinstance(r, builder.BuildResult):
                size = human_size(r.size) if r.size else "-"
                print(f"{p.name}: {r.status.value} (serial {r.serial}, {size}, "
                      f"{r.packages} packages, {r.seconds:.1f}s, "
                      f"downloaded {human_size(r.downloaded_bytes)})")
            elif len(plans) > 1:
                print(f"{p.name}: FAILED", file=sys.stderr)
    if len(plans) == 1 and failed:
        raise failed[0]
    return 1 if failed else 0


def _failure(name: str, exc: VzError) -> dict[str, object]:
    """A failed build for --json; a BuildError says the step it failed in."""
    out: dict[str, object] = {"name": name, "status": "failed", "error": str(exc)}
    if isinstance(exc, BuildError):
        out["step"] = exc.build_step or exc.step
    return out


def cmd_build(args: argparse.Namespace) -> int:
    def work(plan: Any, settings: Settings, **kw: Any) -> builder.BuildResult:
        from vzpkg.build import pipeline as builder
        return builder.build(plan, settings, force=args.force, offline=args.offline, **kw)

    def early(plan: Any, settings: Settings) -> None:
        from vzpkg.build.backends import get_backend
        get_backend(plan.backend).start_early(plan, settings, force=args.force)
    try:
        return _run(args, work, early)
    finally:
        if "vzpkg.build.backends" in sys.modules:
            from vzpkg.build.backends import Backend
            for backend in Backend.registry.values():
                backend.stop_early()


def cmd_update(args: argparse.Namespace) -> int:
    def work(plan: Any, settings: Settings, **kw: Any) -> builder.BuildResult:
        from vzpkg.build import pipeline as builder
        return builder.update(plan, settings, offline=args.offline, **kw)
    return _run(args, work)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="cache name: dist-release[-arch[-set]], e.g. debian-12")
    add_plan_args(p)
    p.add_argument("--offline", action="store_true",
                   help="use only the shared package cache; fail if anything is missing")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="build N caches at once (default 1)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show the package manager's output as it runs")
    add_json_flag(p)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("build", help="build template caches",
                       description="Build template caches from templates.",
                       epilog=BUILD_EPILOG, formatter_class=BuildHelp)
    _common(p)
    p.add_argument("--all", action="store_true", help="build every shipped template")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.set_defaults(func=cmd_build)
    u = sub.add_parser("update", help="upgrade the packages in existing caches",
                       description="Unpack a cache into a temporary VE, run pre-update, "
                                   "upgrade every package, run post-update, and repack "
                                   "only if a package changed (keeping -old).")
    _common(u)
    u.set_defaults(func=cmd_update)
