"""mmdebstrap: apt-based, multi-repository bootstrapper."""

from __future__ import annotations

from pathlib import Path

from vzpkg.backends.deb import DebianBackend
from vzpkg.buildve import contained


class Mmdebstrap(DebianBackend, name="mmdebstrap"):
    tools = ("mmdebstrap", "gpgv")

    def bootstrap(self, root: Path) -> None:
        suite = self.repos()[0].suite
        assert suite
        argv = ["mmdebstrap", "--mode=root", f"--variant={self.plan.options.variant}",
                f"--architectures={self.plan.target_arch}", f"--keyring={self.ctx.keyring}",
                "--aptopt=Acquire::Languages \"none\"",
                ]
        if self.plan.packages:
            argv.append("--include=" + ",".join(self.plan.packages))
        argv += [suite, str(root)]
        # --keyring makes apt trust exactly the pinned keys while mmdebstrap runs
        argv += self.sources(local=True, signed_by=False).splitlines()
        root.mkdir(parents=True, exist_ok=True)
        self.ctx.log.run(contained(["env", "TMPDIR=/tmp", *argv]), step="mmdebstrap",
                         hint="see the log; a signature or checksum error means the "
                              "mirror or the pinned keys are wrong")
