"""debootstrap: the classic Debian bootstrapper.

debootstrap runs in a host-tool sandbox (vzpkg.build.sandbox) in the build's network
namespace.  It runs every command in the tree (dpkg and with it the maintainer
scripts) through ``chroot``, which in its root is vzpkg's: each such command
gets the VE's own sandbox (pivot_root into the tree, bounded capabilities).
debootstrap itself keeps what it needs to make device nodes in the tree and
those sandboxes; the tree's nodes are of no use inside a VE, whose /dev is
always a tmpfs of its own.
"""

from __future__ import annotations

from pathlib import Path

from vzpkg.build.backends.deb import DebianBackend
from vzpkg.build.buildve import BuildVE
from vzpkg.build.sandbox import CHROOT_TOOL


class Debootstrap(DebianBackend, name="debootstrap"):
    tools = ("debootstrap", "gpgv")

    def bootstrap(self, root: Path) -> None:
        first = self.repos()[0]
        assert first.url and first.suite
        argv = ["debootstrap", f"--variant={self.plan.options.variant}",
                f"--arch={self.plan.target_arch}", f"--keyring={self.ctx.keyring}",
                "--force-check-gpg", "--merged-usr",
                f"--components={','.join(first.components) or 'main'}",
                first.suite, str(root), self.proxy_url(first.url)]
        # check_sane_mount makes a node in the tree and writes to it: not nodev
        self.bootstrapper(argv, step="debootstrap", caps=CHROOT_TOOL, nodev=False,
                          chroot=True)
        with BuildVE(root, self.ctx.log, self.ctx.sandbox) as ve:
            self.complete(ve)
