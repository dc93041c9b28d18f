"""debootstrap: the classic Debian bootstrapper."""

from __future__ import annotations

from pathlib import Path

from vzpkg.backends.deb import DebianBackend
from vzpkg.buildve import BuildVE, contained


class Debootstrap(DebianBackend, name="debootstrap"):
    tools = ("debootstrap", "gpgv")

    def bootstrap(self, root: Path) -> None:
        first = self.repos()[0]
        assert first.url and first.suite
        argv = ["debootstrap", f"--variant={self.plan.options.variant}",
                f"--arch={self.plan.target_arch}", f"--keyring={self.ctx.keyring}",
                "--force-check-gpg", "--merged-usr",
                f"--components={','.join(first.components) or 'main'}",
                first.suite, str(root), self.ctx.proxy.url_for(first.url)]
        self.ctx.log.run(contained(argv), step="debootstrap",
                         hint="see the log; a signature or checksum error means the "
                              "mirror or the pinned keys are wrong",
                         started=self.ctx.running)
        with BuildVE(root, self.ctx.log) as ve:
            self.complete(ve)
