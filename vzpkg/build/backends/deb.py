"""What debootstrap and mmdebstrap share: Debian repositories and apt in the VE."""

from __future__ import annotations

import email.utils
import hashlib
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from vzpkg.build.backends import Backend, RepoState
from vzpkg.build.buildve import BuildVE
from vzpkg.core.errors import BuildError
from vzpkg.template.model import Repository

BUILD_KEYRING = "etc/apt/vzpkg-build-keyring.gpg"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
# apt prefers gzip'd indexes: Debian's main Packages.gz is a third larger than
# Packages.xz (downloaded once into the package cache) but unpacks in 0.2 s
# instead of 1 s, in every build (apt falls back to xz where there is no .gz)
APT_PREFER_GZIP = 'Acquire::CompressionTypes::Order { "gz"; };'
APT_OPTS = ("-y", "-q", "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold",
            "-o", "Dpkg::Options::=--force-unsafe-io",   # the tarball is fsynced instead
            "-o", "Acquire::CompressionTypes::Order::=gz")


class DebianBackend(Backend, family="deb"):
    """Base for Debian backends (no name: not registered itself)."""

    def repos(self) -> tuple[Repository, ...]:
        repos = tuple(r for r in self.plan.repositories if r.url and r.suite)
        if not repos:
            raise BuildError("plan", f"template {self.plan.template_file} names no Debian "
                                     "repository with url and suite")
        return repos

    def repo_state(self) -> RepoState:
        """Fetch every repository's InRelease through the cache and verify it with
        gpgv against exactly the pinned keys.  Date: gives the source date."""
        files: list[tuple[str, str]] = []
        newest = 0
        for repo in self.repos():
            assert repo.url and repo.suite
            path = f"dists/{repo.suite}/InRelease"
            try:
                local = self.ctx.proxy.fetch(repo.url, path)
            except OSError as exc:      # requests' errors too
                from vzpkg.core.neterrors import describe
                raise self.fail("repository",
                                f"cannot fetch {repo.url}/{path}: {describe(exc)}",
                                hint="check the mirror URL and the network, or use "
                                     "--offline with a filled package cache") from None
            if local is None:
                if self.ctx.offline:
                    raise self.fail("repository",
                                    f"{repo.url}/{path} is not in the package cache",
                                    hint="build once without --offline to fill the cache")
                raise self.fail("repository", f"{repo.url}/{path} not found (404)",
                                hint=f"is '{repo.suite}' a suite on that mirror?")
            data = self._verify_inrelease(local, f"{repo.url}/{path}")
            files.append((f"{repo.url}/{path}", hashlib.sha256(data).hexdigest()))
            newest = max(newest, _release_date(data, f"{repo.url}/{path}"))
        return RepoState.of(files, newest)

    def _verify_inrelease(self, path: Path, what: str) -> bytes:
        """gpgv against the pinned keyring; at least one VALIDSIG by a pinned key
        and no BADSIG (other signatures by keys we do not pin are ignored, as
        apt does)."""
        status, plain, err = _gpgv(self.ctx.keyring, path)
        good = [ln.split() for ln in status.splitlines() if ln.startswith("[GNUPG:] VALIDSIG")]
        bad = [ln for ln in status.splitlines() if ln.startswith("[GNUPG:] BADSIG")]
        if bad or not good:
            msg = err.strip().splitlines()
            raise self.fail("repository", f"the signature of {what} does not verify with "
                                          f"the template's pinned keys: {' / '.join(msg[-3:])}",
                            hint="check the keys: entries of the template; a build never "
                                 "proceeds with unverified repository metadata")
        return plain

    # -- apt inside the build VE ------------------------------------------------------
    def proxy_url(self, upstream: str) -> str:
        """The package proxy's URL for *upstream*, its port forwarded into the
        build's network namespace (where apt and the bootstrappers run)."""
        url = self.ctx.proxy.url_for(upstream)
        port = urllib.parse.urlsplit(url).port
        assert port is not None
        self.ctx.sandbox.forward(port)
        return url

    def sources(self, *, local: bool, signed_by: bool = True) -> str:
        """sources.list text: through the local proxy (build time, pinned keyring)
        or with the real mirror URLs (what the cache ships)."""
        lines = []
        for repo in self.repos():
            assert repo.url and repo.suite
            url = self.proxy_url(repo.url) if local else repo.url
            opts = f"[signed-by=/{BUILD_KEYRING}] " if local and signed_by else ""
            lines.append(f"deb {opts}{url} {repo.suite} {' '.join(repo.components)}")
        return "\n".join(lines) + "\n"

    def write_sources(self, root: Path, *, local: bool) -> None:
        apt = root / "etc/apt"
        (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
        (apt / "sources.list").write_text(self.sources(local=local))
        kr = root / BUILD_KEYRING
        if local:
            kr.write_bytes(self.ctx.keyring.read_bytes())
        else:
            kr.unlink(missing_ok=True)

    def bootstrapper(self, argv: list[str], *, step: str, **sandbox: Any) -> None:
        """Run a bootstrapper's command line *argv* in a host-tool sandbox of the
        build (*sandbox*: its options, see Sandbox.tool); what the build does
        beside the package manager begins as it starts."""
        cmd = self.ctx.sandbox.tool(argv, work=self.ctx.work, **sandbox)
        self.ctx.log.run(cmd, step=step,
                         hint="see the log; a signature or checksum error means the "
                              "mirror or the pinned keys are wrong",
                         started=self.ctx.running)

    def apt(self, ve: BuildVE, *args: str, step: str) -> None:
        ve.run(["apt-get", *APT_OPTS, *args], step=step, env=APT_ENV)

    def complete(self, ve: BuildVE) -> None:
        """After bootstrap: bring in the other repositories' updates and the set's
        packages, through the proxy."""
        self.update(ve)
        self.apt(ve, "install", "--no-install-recommends", *self.plan.packages,
                 step="apt-get install")

    def update(self, ve: BuildVE) -> None:
        self.write_sources(ve.root, local=True)
        self.apt(ve, "update", step="apt-get update")
        self.apt(ve, "dist-upgrade", step="apt-get dist-upgrade")

    def clean(self, root: Path) -> None:
        self.write_sources(root, local=False)
        for d in ("var/lib/apt/lists", "var/cache/apt/archives"):
            base = root / d
            if base.is_dir():
                for f in base.rglob("*"):
                    if f.is_file() or f.is_symlink():
                        f.unlink()
        for name in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"):
            (root / name).unlink(missing_ok=True)

    def tool_versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for tool in ("debootstrap", "mmdebstrap", "apt"):
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", tool],
                               capture_output=True, text=True, check=False)
            if r.returncode == 0 and r.stdout:
                out[tool] = r.stdout
        return out


def _gpgv(keyring: Path, path: Path) -> tuple[str, bytes, str]:
    """Run gpgv; returns (status lines, signed plaintext, stderr)."""
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(["gpgv", "--status-fd", str(wfd), "--keyring", str(keyring),
                                 "--output", "-", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(wfd,))
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as status_pipe:
        out, err = proc.communicate()
        status = status_pipe.read()
    return status.decode("utf-8", "replace"), out, err.decode("utf-8", "replace")


def _release_date(data: bytes, what: str) -> int:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("Date:"):
            dt = email.utils.parsedate_to_datetime(line[5:].strip())
            return int(dt.timestamp())
        if not line.strip():
            break
    raise BuildError("repository", f"{what} has no Date: field")
