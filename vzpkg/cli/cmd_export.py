"""``vzpkg export``: a cache as an OCI, LXC or Incus image."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from vzpkg.cli.common import add_json_flag, emit_json
from vzpkg.core.errors import UsageError

EPILOG = """\
formats:
  oci    DEST is a new OCI image layout directory with one layer, the cache's own
         bytes (zstd or gzip; an xz cache is recompressed to gzip).  The image
         digest depends on the cache alone.  Use it with
           skopeo copy oci:DEST:NAME containers-storage:NAME     (podman)
           umoci unpack --image DEST:NAME BUNDLE     (with --oci-layer gzip)
  lxc    DEST is a new directory with rootfs.tar.xz and meta.tar.xz:
           lxc-create -n CT -t local -- --metadata DEST/meta.tar.xz \\
                                       --fstree DEST/rootfs.tar.xz
  incus  DEST is a new unified image tarball (metadata.yaml, templates/, rootfs/):
           incus image import DEST --alias NAME

DEST must not exist: nothing is ever replaced.  The export is written beside it
under a temporary name and renamed into place when complete.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to *sub*."""
    p = sub.add_parser("export", help="write a cache as an OCI, LXC or Incus image",
                       description="Write cache NAME as an image another engine runs.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="cache name (or short form, e.g. debian-12)")
    p.add_argument("--format", required=True, choices=("oci", "lxc", "incus"),
                   help="image format")
    p.add_argument("dest", metavar="DEST", type=Path, help="where to write it (must not "
                   "exist)")
    p.add_argument("--cmd", metavar="COMMAND",
                   help="oci: the image's default command (default: /sbin/init when the "
                        "tree has it, else /bin/sh)")
    p.add_argument("--oci-layer", choices=("cache", "gzip"), default="cache",
                   help="oci: the layer is the cache's own bytes (default; zstd for "
                        "zstd caches) or the tree recompressed to gzip, for tools that "
                        "read no zstd layers (umoci 0.4, Docker before 23)")
    add_json_flag(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from vzpkg.core.settings import load_settings
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.store.export import export

    cmd = None
    if args.oci_layer != "cache" and args.format != "oci":
        raise UsageError("--oci-layer applies to --format oci only")
    if args.cmd is not None:
        if args.format != "oci":
            raise UsageError("--cmd applies to --format oci only")
        cmd = tuple(shlex.split(args.cmd))
        if not cmd:
            raise UsageError("--cmd: empty command", hint="e.g. --cmd /bin/bash")
    settings = load_settings(workspace=args.workspace, cache_dir=args.cache_dir)
    report = export(CacheStore(settings.cache_dir), args.name, args.format, args.dest,
                    cmd=cmd, oci_layer=args.oci_layer)
    if args.json:
        emit_json({"name": report.name, "serial": report.serial, "format": report.format,
                   "dest": str(report.dest), "digest": report.digest,
                   "files": list(report.files)})
    else:
        what = "image manifest digest" if report.format == "oci" else "sha256"
        print(f"{report.name} serial {report.serial}: exported as {report.format} to "
              f"{report.dest} ({what} {report.digest})")
    return 0
