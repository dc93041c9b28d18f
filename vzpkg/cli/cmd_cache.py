"""``vzpkg import``, ``vzpkg verify``, ``vzpkg remove``, ``vzpkg prune``: the cache
store and the package cache beside it."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.cli.common import add_json_flag, emit_json
from vzpkg.core.errors import GpgError, UsageError
from vzpkg.core.types import Compression
from vzpkg.core.units import human_size

# The store (and through it libarchive), gpg and the configuration (yaml) are
# imported by the commands: registering them must stay cheap.
if TYPE_CHECKING:
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.template.model import Key


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to *sub*."""
    p = sub.add_parser(
        "import", help="turn a root file system tarball into a cache",
        description="Check, unpack and repack a root file system tarball (plain, gzip, "
                    "xz or zstd) as cache NAME, with a manifest listing its packages. "
                    "The source date is $SOURCE_DATE_EPOCH, else the newest file time "
                    "in the tarball. Needs root.")
    p.add_argument("file", metavar="FILE", type=Path, help="the root file system tarball")
    p.add_argument("--name", required=True,
                   help="cache name: <distribution>-<release>-<arch>-<set>")
    p.add_argument("--compression", choices=[c.value for c in Compression],
                   default=Compression.ZSTD.value, help="compression of the cache "
                   "(default: zstd)")
    add_json_flag(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "verify", help="re-check caches against their manifests and signatures",
        description="Check each cache's size, sha256, every archive entry's safety, its "
                    "file count and its signature. Exits non-zero if any check fails.")
    p.add_argument("names", metavar="NAME", nargs="*",
                   help="cache names (default: every cache in the cache directory)")
    p.add_argument("--trusted-key", metavar="FILE:FINGERPRINT", action="append",
                   default=[], help="an armored public key and its pinned fingerprint "
                   "to check signatures with (repeatable)")
    add_json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("remove", help="remove a cache and its -old copy",
                       description="Remove cache NAME: tarball, manifest, signature and "
                                   "the -old copy.")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "prune", help="remove package downloads that no cache needs any more",
        description="Trim the shared package cache (<cache dir>/.pkgcache): keep the\n"
                    "package files that the caches in the cache directory (and their\n"
                    "-old copies) were built from and the indexes their repositories\n"
                    "still name; remove other packages, superseded indexes and\n"
                    "leftovers of killed downloads. Fails while a build is running.",
        epilog="examples:\n  vzpkg prune --dry-run        what would go, and how much\n"
               "  vzpkg prune --json           remove, and report as JSON",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    add_json_flag(p)
    p.set_defaults(func=cmd_prune)


def _store(args: argparse.Namespace) -> CacheStore:
    from vzpkg.core.settings import load_settings
    from vzpkg.store.cachestore import CacheStore
    settings = load_settings(workspace=args.workspace, cache_dir=args.cache_dir)
    return CacheStore(settings.cache_dir)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(f"vzpkg: {line}", file=sys.stderr, flush=True)


def cmd_import(args: argparse.Namespace) -> int:
    from vzpkg.store.importer import import_tarball
    from vzpkg.store.manifest import expand_name

    store = _store(args)
    signal.signal(signal.SIGTERM, _interrupt)    # clean up as for Ctrl-C
    entry = import_tarball(store, args.file, expand_name(args.name),
                           compression=Compression(args.compression), say=_say)
    m = entry.manifest
    if args.json:
        emit_json({"name": m.name, "serial": m.serial, "tarball": str(entry.tarball),
                   "manifest": str(entry.manifest_path), "size": m.size,
                   "sha256": m.sha256, "file_count": m.file_count,
                   "unpacked_size": m.unpacked_size, "packages": len(m.packages),
                   "source_date": m.source_date})
    else:
        print(f"{m.name}: imported as serial {m.serial}, {m.file_count} files, "
              f"{len(m.packages)} packages, {human_size(m.size)} "
              f"({human_size(m.unpacked_size)} unpacked)")
        print(f"  {entry.tarball}")
        print(f"  sha256 {m.sha256}")
    return 0


def _trusted_keys(specs: list[str]) -> list[Key]:
    from vzpkg.core.pgpkeys import normalize_fingerprint
    from vzpkg.template.model import Key
    keys: list[Key] = []
    for spec in specs:
        file, sep, fpr = spec.rpartition(":")
        if not sep or not file:
            raise UsageError(f"--trusted-key {spec!r}: expected FILE:FINGERPRINT",
                             hint="e.g. --trusted-key keys/signer.asc:0123...(40 hex)")
        try:
            armored = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--trusted-key {spec!r}: cannot read {file}: {exc}") from None
        try:
            keys.append(Key(Path(file), normalize_fingerprint(fpr), armored))
        except GpgError as exc:
            raise UsageError(f"--trusted-key {spec!r}: {exc.message}", hint=exc.hint) from None
    return keys


def cmd_verify(args: argparse.Namespace) -> int:
    from vzpkg.store.manifest import expand_name
    store = _store(args)
    keys = _trusted_keys(args.trusted_key)
    names = [expand_name(n) for n in args.names] or store.names()
    if not names:
        raise UsageError(f"no caches in {store.dir} to verify",
                         hint="name the caches to verify, or use --cache-dir")
    reports = [store.verify(n, trusted_keys=keys) for n in names]
    if args.json:
        emit_json([r.to_json() for r in reports])
    else:
        for r in reports:
            if r.ok:
                assert r.manifest is not None
                signed = f", signed by {r.signer}" if r.signer else ""
                print(f"{r.name}: OK (serial {r.manifest.serial}, "
                      f"{r.manifest.file_count} files, {human_size(r.manifest.size)}"
                      f"{signed})")
            else:
                print(f"{r.name}: FAILED: {'; '.join(r.problems)}")
            for note in r.notes:
                print(f"  note: {note}")
    return 0 if all(r.ok for r in reports) else 1


def cmd_remove(args: argparse.Namespace) -> int:
    from vzpkg.store.manifest import expand_name
    store = _store(args)
    name = expand_name(args.name)
    store.remove(name)
    if args.json:
        emit_json({"removed": name})
    else:
        print(f"removed {name} (and its -old copy)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from vzpkg.build.pkgcache_prune import prune
    from vzpkg.core.settings import load_settings
    settings = load_settings(workspace=args.workspace, cache_dir=args.cache_dir)
    report = prune(settings.cache_dir, settings.pkg_cache_dir, dry_run=args.dry_run)
    if args.json:
        emit_json(report.to_json())
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for p in report.removed:
        print(f"{verb} {p}")
    print(f"{verb} {len(report.removed)} files ({human_size(report.freed_bytes)}) from "
          f"{report.directory}; kept {report.kept_packages} package files")
    return 0
