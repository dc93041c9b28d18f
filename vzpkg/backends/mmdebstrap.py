"""mmdebstrap: apt-based, multi-repository bootstrapper."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vzpkg.backends.deb import APT_PREFER_GZIP, DebianBackend
from vzpkg.buildve import contained, fs_type
from vzpkg.payloads import BuildPayloads, Payloads, remove_leftover

EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
# what mmdebstrap leaves for its --aptopt / --dpkgopt: build-time settings only
LEFTOVERS = ("etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap")
# In root mode mmdebstrap bind-mounts the host's /dev/shm into the tree, where the
# maintainer scripts would see it (build trees live there by default).  Nothing
# runs inside the tree before the extract hooks: a private tmpfs goes over it then
# and comes off again when the packages are in, before mmdebstrap's own unmount.
PRIVATE_SHM = ('--extract-hook=mkdir -p "$1/dev/shm" && '
               'mount -t tmpfs -o nosuid,nodev,mode=1777 vzpkg-shm "$1/dev/shm"')
PRIVATE_SHM_END = '--customize-hook=umount "$1/dev/shm"'


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
                "--dpkgopt=force-unsafe-io", PRIVATE_SHM, PRIVATE_SHM_END]
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
        if bp is not None:
            self._payloads = bp
            argv += bp.mmdebstrap_options()
            env.append(f"PATH={bp.path(os.environ.get('PATH', '/usr/bin:/bin'))}")
            self.ctx.proxy.on_package = bp.add
        if self.plan.packages:
            argv.append("--include=" + ",".join(self.plan.packages))
        argv += [suite, str(root)]
        # --keyring makes apt trust exactly the pinned keys while mmdebstrap runs
        argv += self.sources(local=True, signed_by=False).splitlines()
        root.mkdir(parents=True, exist_ok=True)
        self.ctx.log.run(contained(["env", *env, *argv]), step="mmdebstrap",
                         hint="see the log; a signature or checksum error means the "
                              "mirror or the pinned keys are wrong",
                         started=self.ctx.running)

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
