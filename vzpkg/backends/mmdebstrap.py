"""mmdebstrap: apt-based, multi-repository bootstrapper."""

from __future__ import annotations

import shutil
from pathlib import Path

from vzpkg.backends.deb import APT_PREFER_GZIP, DebianBackend
from vzpkg.buildve import contained, fs_type

EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
# what mmdebstrap leaves for its --aptopt / --dpkgopt: build-time settings only
LEFTOVERS = ("etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap")


class Mmdebstrap(DebianBackend, name="mmdebstrap"):
    tools = ("mmdebstrap", "gpgv")

    def bootstrap(self, root: Path) -> None:
        suite = self.repos()[0].suite
        assert suite
        argv = ["mmdebstrap", "--mode=root", f"--variant={self.plan.options.variant}",
                f"--architectures={self.plan.target_arch}", f"--keyring={self.ctx.keyring}",
                "--aptopt=Acquire::Languages \"none\"",
                f"--aptopt={APT_PREFER_GZIP}",
                # the build tree is thrown away if anything fails and the tarball is
                # fsynced when packed: dpkg's per-file fsyncs buy nothing here
                "--dpkgopt=force-unsafe-io"]
        # on disk, eatmydata spares the fsyncs of dpkg's own database as well; in
        # memory (the default work directory) fsync costs nothing and the hook's
        # extra apt run and preloaded library cost about 1 s
        if (fs_type(root.parent) != "tmpfs" and EATMYDATA_HOOKS.is_dir()
                and shutil.which("eatmydata")):
            argv.append(f"--hook-dir={EATMYDATA_HOOKS}")
        if self.plan.packages:
            argv.append("--include=" + ",".join(self.plan.packages))
        argv += [suite, str(root)]
        # --keyring makes apt trust exactly the pinned keys while mmdebstrap runs
        argv += self.sources(local=True, signed_by=False).splitlines()
        root.mkdir(parents=True, exist_ok=True)
        self.ctx.log.run(contained(["env", "TMPDIR=/tmp", *argv]), step="mmdebstrap",
                         hint="see the log; a signature or checksum error means the "
                              "mirror or the pinned keys are wrong",
                         started=self.ctx.running)

    def clean(self, root: Path) -> None:
        super().clean(root)
        for rel in LEFTOVERS:
            (root / rel).unlink(missing_ok=True)
