"""mmdebstrap: apt-based, multi-repository bootstrapper.

mmdebstrap runs in root mode inside a host-tool sandbox (vzpkg.build.sandbox): its
own root with the host's system read-only, the build's network namespace (the
package proxy is all it reaches), and no CAP_SYS_ADMIN or CAP_MKNOD, so the
maintainer scripts it runs in its chroot can neither mount, make device nodes,
nor reach the host's files or network.  mmdebstrap notices that it cannot
mount and leaves /proc, /sys and /dev to us: its extract hook asks the
sandbox's first process (which kept its capabilities) to mount them in the
tree once base-files is unpacked, as mmdebstrap itself would, with a private
/dev/shm and the payload helper; its customize hook has them taken out again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from vzpkg.build.backends.deb import APT_PREFER_GZIP, DebianBackend
from vzpkg.build.buildve import fs_type
from vzpkg.build.payloads import BuildPayloads, Payloads, remove_leftover
from vzpkg.build.sandbox import KEEP, TreeMounts, request

EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
# what mmdebstrap leaves for its --aptopt / --dpkgopt: build-time settings only
LEFTOVERS = ("etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap")
# the tree's /proc, /sys and /dev while mmdebstrap installs (it makes /dev/fd and
# the other links itself, and removes them again)
TREE_MOUNTS = TreeMounts(mounts=("proc", "sys", "dev"), dev_extra=("pts", "shm"),
                         dev_links=())
MOUNT_HOOK = "--extract-hook=" + request("mount")
UMOUNT_HOOK = "--customize-hook=" + request("umount")


class Mmdebstrap(DebianBackend, name="mmdebstrap"):
    tools = ("mmdebstrap", "gpgv")

    _payloads: BuildPayloads | None = None
    _finished = False

    def bootstrap(self, root: Path) -> None:
        suite = self.repos()[0].suite
        assert suite
        argv = ["mmdebstrap", "--mode=root", f"--variant={self.plan.options.variant}",
                f"--architectures={self.plan.target_arch}", f"--keyring={self.ctx.keyring}",
                "--aptopt=Acquire::Languages \"none\"",
                f"--aptopt={APT_PREFER_GZIP}",
                # the build tree is thrown away if anything fails and the tarball is
                # fsynced when packed: dpkg's per-file fsyncs buy nothing here
                "--dpkgopt=force-unsafe-io", MOUNT_HOOK, UMOUNT_HOOK]
        # on disk, eatmydata spares the fsyncs of dpkg's own database as well; in
        # memory (the default work directory) fsync costs nothing and the hook's
        # extra apt run and preloaded library cost about 1 s
        if (fs_type(root.parent) != "tmpfs" and EATMYDATA_HOOKS.is_dir()
                and shutil.which("eatmydata")):
            argv.append(f"--hook-dir={EATMYDATA_HOOKS}")
        env = ["TMPDIR=/tmp"]
        bp = None
        if self.ctx.payloads:
            try:
                bp = BuildPayloads(Payloads(self.ctx.pkg_cache), self.ctx.work)
            except OSError as exc:      # a full or read-only disk: build without it
                self.ctx.log.write(f"payload cache not used: {exc}")
        mounts, ro = TREE_MOUNTS, []
        if bp is not None:
            self._payloads = bp
            argv += bp.mmdebstrap_options()
            env.append(f"PATH={bp.path(os.environ.get('PATH', '/usr/bin:/bin'))}")
            self.ctx.proxy.on_package = bp.add
            mounts = dataclasses.replace(TREE_MOUNTS, binds=tuple(bp.ve_binds()))
            ro.append(bp.view)
        if self.plan.packages:
            argv.append("--include=" + ",".join(self.plan.packages))
        argv += [suite, str(root)]
        # --keyring makes apt trust exactly the pinned keys while mmdebstrap runs
        argv += self.sources(local=True, signed_by=False).splitlines()
        root.mkdir(parents=True, exist_ok=True)
        self.bootstrapper(["env", *env, *argv], step="mmdebstrap", tree=root,
                          tree_mounts=mounts, ro=ro, caps=KEEP, serve=True)

    def clean(self, root: Path) -> None:
        self._finished = True
        remove_leftover(root)
        super().clean(root)
        for rel in LEFTOVERS:
            (root / rel).unlink(missing_ok=True)

    def close(self) -> None:
        """Payloads still being made are finished after a build that got as far
        as cleaning its tree (most are made while dpkg works), dropped otherwise."""
        bp, self._payloads = self._payloads, None
        if bp is not None:
            self.ctx.proxy.on_package = None
            bp.close(finish=self._finished)
            self.ctx.log.write(f"payload cache: {bp.ready} packages had their payload kept, "
                               f"{bp.made} payloads made")
