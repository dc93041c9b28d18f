"""vzpkg publish / pull: signed static mirrors of caches."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.cli.common import add_json_flag, emit_json
from vzpkg.core.errors import UsageError
from vzpkg.core.units import human_size

# vzpkg.mirror (requests, gnupg) and the configuration (yaml) are imported in the
# commands: every other vzpkg command would pay for them at start-up otherwise
if TYPE_CHECKING:
    from vzpkg.core.settings import Settings

PUBLISH_EPILOG = """\
In CI, each build job keeps its cache directory as an artifact and one last job
merges them into the tree with one signed index:
  vzpkg publish /srv/mirror --merge job1/caches --merge job2/caches --sign KEYID
(see 'vzpkg matrix' and examples/ci/).
The tree holds index.json (+ .asc) and caches/<name>/<serial>/ with the
tarball, its manifest and its detached signature; serve it with any static
web server.  The signing key comes from --sign or signing.key in vzpkg.yaml,
the keyring from --gnupghome, signing.gnupghome or $GNUPGHOME.
"""

PULL_EPILOG = """\
Mirrors: --mirror URL (repeatable), else pull.mirrors in vzpkg.yaml, then
TEMPLATE_MIRRORS in $VZ_ROOT/etc/vz/vz.conf; tried in order.  Trusted keys:
pull.trusted_keys [{file, fingerprint}] and TEMPLATE_KEYS="FILE:FINGERPRINT".
An interrupted download is resumed by the next pull.
"""


def _settings(args: argparse.Namespace) -> Settings:
    from vzpkg.core.settings import load_settings
    return load_settings(workspace=args.workspace, cache_dir=args.cache_dir)


def cmd_publish(args: argparse.Namespace) -> int:
    from vzpkg.core.gpg import Keyring
    from vzpkg.mirror import mirror_config, publish
    from vzpkg.store.cachestore import CacheStore

    settings = _settings(args)
    cfg = mirror_config(settings)
    keyid = args.sign or cfg.signing_key
    if not keyid:
        raise UsageError("publish needs a signing key: pass --sign KEYID",
                         hint="or set signing.key in vzpkg.yaml; mirrors are always signed")
    home = Path(args.gnupghome) if args.gnupghome else cfg.gnupghome
    if home is None:
        home = Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
    if not home.is_dir():
        raise UsageError(f"GnuPG home {home} does not exist",
                         hint="pass --gnupghome DIR with the keyring holding the signing key")
    store = CacheStore(settings.cache_dir)
    merge = [Path(d) for d in args.merge]
    s3 = args.dest.startswith("s3://")
    if s3 and args.keep is not None:
        raise UsageError("--keep is for directory trees: objects in a bucket are never "
                         "deleted by publish",
                         hint="expire old serials with the bucket's lifecycle rules")
    with Keyring(home) as keyring:
        if s3:
            from vzpkg.mirror.s3 import publish_s3
            report = publish_s3(store, args.dest, args.names, keyring=keyring, keyid=keyid,
                                merge=merge)
        else:
            report = publish(store, Path(args.dest), args.names, keyring=keyring,
                             keyid=keyid, keep=args.keep, merge=merge)
    where = f"{args.dest.rstrip('/')}/index.json" if s3 else str(report.dest / "index.json")
    if args.json:
        emit_json({"dest": args.dest if s3 else str(report.dest),
                   "index_written": report.index_written,
                   "pruned": list(report.pruned),
                   "caches": [vars(c) for c in report.caches]})
        return 0
    for c in report.caches:
        print(f"{c.name}: {c.status} serial {c.serial} ({human_size(c.size)}) {c.tarball}")
    for p in report.pruned:
        print(f"pruned {p}")
    print(f"index: {'written' if report.index_written else 'unchanged'} ({where})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise UsageError("name the caches to pull, or pass --all")
    from vzpkg.mirror import NoProgress, Progress, Puller, TextProgress, mirror_config
    from vzpkg.store.cachestore import CacheStore

    settings = _settings(args)
    cfg = mirror_config(settings)
    if args.mirror:
        cfg = cfg.with_mirrors(tuple(args.mirror))
    progress: Progress = NoProgress() if args.json else TextProgress(sys.stderr)
    with Puller(CacheStore(settings.cache_dir), cfg, progress) as puller:
        report = puller.pull(args.names, everything=args.all)
    if args.json:
        out: dict[str, Any] = {"pulled": [p._asdict() for p in report.pulled],
                               "failed": [{"name": n, "error": e} for n, e in report.failed]}
        emit_json(out)
    else:
        for p in report.pulled:
            if p.status == "current":
                print(f"{p.name}: serial {p.serial} is current, nothing downloaded")
            else:
                resumed = f", resumed at {human_size(p.resumed_from)}" if p.resumed_from else ""
                print(f"{p.name}: pulled serial {p.serial} ({human_size(p.size)}) from "
                      f"{p.mirror}{resumed}; sha256 and signature verified")
    for name, why in report.failed:
        what = "no mirror could be read" if name == "*" else f"cannot pull {name}"
        print(f"vzpkg: error: {what}:\n  {why}", file=sys.stderr)
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to *sub*."""
    p = sub.add_parser("publish", help="write caches into a signed static mirror tree",
                       epilog=PUBLISH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", metavar="DEST", help="directory of the mirror tree, or "
                   "s3://BUCKET/PREFIX (credentials from the standard AWS environment "
                   "and ~/.aws; an S3-compatible store's endpoint from AWS_ENDPOINT_URL)")
    p.add_argument("names", metavar="NAME", nargs="*",
                   help="caches to publish (default: every cache in the cache directory)")
    p.add_argument("--sign", metavar="KEYID", help="signing key (fingerprint, id or user id)")
    p.add_argument("--gnupghome", metavar="DIR", help="GnuPG home with the secret key")
    p.add_argument("--keep", metavar="N", type=int,
                   help="keep only the N newest serials of each cache in the tree")
    p.add_argument("--merge", metavar="DIR", action="append", default=[],
                   help="publish the caches of DIR instead of the cache directory: the "
                        "cache directory (or published tree) of one CI build job; "
                        "repeat for each job.  Nothing is rebuilt; each tarball is "
                        "checked against its manifest, the newest serial of a name wins")
    add_json_flag(p)
    p.set_defaults(func=cmd_publish)

    q = sub.add_parser("pull", help="download caches from mirrors, verifying every byte",
                       epilog=PULL_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("names", metavar="NAME", nargs="*", help="caches to pull")
    q.add_argument("--all", action="store_true", help="pull every cache the mirror lists")
    q.add_argument("--mirror", metavar="URL", action="append",
                   help="mirror base URL (repeatable; replaces the configured mirrors)")
    add_json_flag(q)
    q.set_defaults(func=cmd_pull)
