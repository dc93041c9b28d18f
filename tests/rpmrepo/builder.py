"""Build the signed test RPM distribution "vztest" from the spec files beside
this module.

Steps: rpmbuild (three runs in parallel) -> throwaway GPG keys in private
GNUPGHOMEs -> rpmsign copies of the packages -> one directory per repository
variant with createrepo_c's Python bindings -> repomd.xml signed (detached,
armored) -> a workspace with the test template whose key pin is the
generated key's fingerprint.

Repository variants (directories under ``Distribution.root``):

``good``          every package, signed by the distribution key
``v2``            good plus vztest-c release 2 (an update)
``unsigned``      vztest-b without a signature
``otherkey``      vztest-b signed by another key
``badsum``        vztest-b replaced after createrepo (checksum mismatch)
``unresolvable``  vztest-c missing, so vztest-b's dependency cannot be met
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import createrepo_c as cr

HERE = Path(__file__).resolve().parent
SPECS = HERE
TEMPLATE = HERE / "vztest.yaml"
BUSYBOX = Path("/bin/busybox")
VARIANTS = ("good", "v2", "unsigned", "otherkey", "badsum", "unresolvable")
# what the "minimal" set of the test template installs (with dependencies)
MINIMAL = ("vztest-filesystem", "vztest-setup", "vztest-busybox", "vztest-release",
           "vztest-hello", "vztest-a", "vztest-b", "vztest-c")
FP_PLACEHOLDER = "@VZTEST_FINGERPRINT@"
URL_PLACEHOLDER = "@VZTEST_URL@"
REVISION = 1_700_000_000          # repomd revision/timestamp of the good repository


class BuildFailed(RuntimeError):
    """A tool used to build the test distribution failed."""


@dataclass(frozen=True)
class SigningKey:
    home: Path            # private GNUPGHOME holding the secret key
    fingerprint: str
    armored: str
    uid: str


@dataclass(frozen=True)
class Distribution:
    root: Path                    # served directory: one subdirectory per variant
    key: SigningKey               # the distribution's key (pinned by the template)
    other_key: SigningKey         # a key the template does not trust
    workspace: Path               # workspace with metadata/vztest.yaml + its key
    rpms: tuple[Path, ...]        # the signed packages of the good repository

    def repo(self, variant: str) -> Path:
        assert variant in VARIANTS, variant
        return self.root / variant

    @property
    def template(self) -> Path:
        return self.workspace / "metadata" / "vztest.yaml"


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                       env=env, cwd=cwd)
    if r.returncode != 0:
        raise BuildFailed(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def _tool_env(home: Path) -> dict[str, str]:
    """A private HOME so no ~/.rpmmacros or ~/.gnupg of the caller is read."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LC_ALL": "C"}


def rpmbuild(work: Path, *, busybox: Path = BUSYBOX) -> list[Path]:
    """Build every package (vztest-c at releases 1 and 2); returns the rpm files."""
    if not busybox.is_file():
        raise BuildFailed(f"{busybox} is missing: install busybox-static")
    jobs = [("vztest.spec", "main", "1"), ("vztest-c.spec", "c1", "1"),
            ("vztest-c.spec", "c2", "2")]
    procs = []
    for spec, name, rel in jobs:
        top = work / f"rpmbuild-{name}"
        top.mkdir(parents=True)
        argv = ["rpmbuild", "-bb", "--quiet",
                "--define", f"_topdir {top}",
                "--define", f"vz_busybox {busybox}",
                "--define", f"vz_release {rel}",
                "--define", "_binary_payload w1.gzdio",
                "--define", "_tmppath " + str(top),
                str(SPECS / spec)]
        procs.append((argv, top, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_tool_env(work)), ))
    out: list[Path] = []
    for argv, top, p in procs:
        text, _ = p.communicate()
        if p.returncode != 0:
            raise BuildFailed(f"{' '.join(argv)} failed:\n{text}")
        out.extend(sorted((top / "RPMS").rglob("*.rpm")))
    return out


def make_key(home: Path, uid: str) -> SigningKey:
    """A throwaway signing key without passphrase in its own GNUPGHOME."""
    home.mkdir(parents=True, mode=0o700)
    env = {**_tool_env(home), "GNUPGHOME": str(home)}
    _run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
          "--quick-generate-key", uid, "rsa2048", "sign", "never"], env=env)
    colons = _run(["gpg", "--batch", "--with-colons", "--fingerprint", uid], env=env)
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    armored = _run(["gpg", "--batch", "--armor", "--export", fpr], env=env)
    return SigningKey(home=home, fingerprint=fpr.upper(), armored=armored, uid=uid)


def gpg_kill(key: SigningKey) -> None:
    subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"],
                   capture_output=True, check=False)


def rpmsign(key: SigningKey, rpms: Sequence[Path]) -> None:
    """Sign *rpms* in place with *key* (rpmsign --addsign)."""
    if not rpms:
        return
    env = {**_tool_env(key.home), "GNUPGHOME": str(key.home)}
    _run(["rpmsign", "--addsign",
          "--define", f"_gpg_name {key.fingerprint}",
          "--define", f"_gpg_path {key.home}",
          "--define", f"__gpg {shutil.which('gpg') or '/usr/bin/gpg'}",
          *map(str, rpms)], env=env)


def sign_detached(key: SigningKey, path: Path) -> Path:
    env = {**_tool_env(key.home), "GNUPGHOME": str(key.home)}
    asc = path.with_name(path.name + ".asc")
    _run(["gpg", "--batch", "--yes", "--armor", "--local-user", key.fingerprint,
          "--output", str(asc), "--detach-sign", str(path)], env=env)
    return asc


def createrepo(repo: Path, rpms: Sequence[Path], *, revision: int,
               sign_with: SigningKey | None) -> None:
    """Copy *rpms* into *repo* (hard links) and write its repodata."""
    repo.mkdir(parents=True)
    pkgs = repo / "Packages"
    pkgs.mkdir()
    with cr.RepositoryWriter(str(repo), num_packages=len(rpms),
                             compression=cr.GZ_COMPRESSION) as w:
        w.repomd.set_revision(str(revision))
        for rpm in sorted(rpms, key=lambda p: p.name):
            dest = pkgs / rpm.name
            os.link(rpm, dest)
            w.add_pkg_from_file(str(dest))
    if sign_with is not None:
        sign_detached(sign_with, repo / "repodata" / "repomd.xml")


def _pick(rpms: Sequence[Path], name: str, release: str = "1") -> Path:
    for p in rpms:
        if p.name.startswith(f"{name}-1.0-{release}."):
            return p
    raise BuildFailed(f"{name}-1.0-{release} was not built")


def build_distribution(work: Path, *, busybox: Path = BUSYBOX) -> Distribution:
    """Build everything under the empty-or-missing directory *work*."""
    work.mkdir(parents=True, exist_ok=True)
    built = rpmbuild(work / "build", busybox=busybox)
    key = make_key(work / "gpg-vztest", "vztest distribution <vztest@example.invalid>")
    other = make_key(work / "gpg-other", "someone else <other@example.invalid>")
    try:
        signed_dir = work / "signed"
        signed_dir.mkdir()
        signed = [Path(shutil.copy2(p, signed_dir / p.name)) for p in built]
        rpmsign(key, signed)
        b_unsigned = _pick(built, "vztest-b")
        (work / "otherkey").mkdir()
        b_other = Path(shutil.copy2(b_unsigned, work / "otherkey" / b_unsigned.name))
        rpmsign(other, [b_other])

        c2 = _pick(signed, "vztest-c", "2")
        good = [p for p in signed if p != c2]
        b = _pick(good, "vztest-b")
        without_b = [p for p in good if p != b]
        root = work / "repos"
        createrepo(root / "good", good, revision=REVISION, sign_with=key)
        createrepo(root / "v2", [*good, c2], revision=REVISION + 100, sign_with=key)
        createrepo(root / "unsigned", [*without_b, b_unsigned], revision=REVISION,
                   sign_with=key)
        createrepo(root / "otherkey", [*without_b, b_other], revision=REVISION,
                   sign_with=key)
        createrepo(root / "badsum", good, revision=REVISION, sign_with=key)
        bad = root / "badsum" / "Packages" / b.name
        bad.unlink()
        shutil.copy2(b_other, bad)        # same name, other bytes
        createrepo(root / "unresolvable",
                   [p for p in good if p != _pick(good, "vztest-c")],
                   revision=REVISION, sign_with=key)
    finally:
        gpg_kill(key)
        gpg_kill(other)
    workspace = work / "workspace"
    write_workspace(workspace, key, "http://127.0.0.1:1/unset")
    return Distribution(root=root, key=key, other_key=other, workspace=workspace,
                        rpms=tuple(sorted(good)))


def render_template(fingerprint: str, url: str) -> str:
    text = TEMPLATE.read_text(encoding="utf-8")
    return text.replace(FP_PLACEHOLDER, fingerprint).replace(URL_PLACEHOLDER, url)


def write_workspace(workspace: Path, key: SigningKey, url: str, *,
                    fingerprint: str | None = None) -> Path:
    """A vzpkg workspace whose metadata/ holds the test template pinned to *key*
    (or to *fingerprint*, to test a wrong pin) with its mirror at *url*."""
    meta = workspace / "metadata"
    (meta / "keys").mkdir(parents=True, exist_ok=True)
    (meta / "keys" / "vztest.asc").write_text(key.armored, encoding="utf-8")
    (meta / "vztest.yaml").write_text(
        render_template(fingerprint or key.fingerprint, url), encoding="utf-8")
    return workspace
