"""What dnf is told: the configuration file and the command line, from a Plan.

Pure functions (no I/O besides what the caller writes), so the shipped RPM
templates can be checked without their mirrors.

Template variables read here (set them per release under ``releases:`` or
under ``variables:``):

``releasever``          dnf's $releasever (default: the release name)
``rpmdb_path``          where the target's rpm keeps its database (default: see
                        :func:`default_rpmdb`; a wrong one fails the build with a hint)
``repo_gpgcheck``       ``1``: repomd.xml must carry a signature by a pinned key;
                        ``0``: the distribution does not sign it.  Default: 1 for
                        ``url`` (baseurl) repositories; 0 for metalink and https
                        mirrorlist ones, whose repomd.xml is checked against the
                        metalink's hashes or comes over TLS.  Packages are always
                        checked against the pinned keys.
``module_platform_id``  e.g. ``platform:el9`` for modular EL repositories
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import TemplateError
from vzpkg.template.model import Plan, Repository

DEFAULT_RPMDB = "/var/lib/rpm"
CACHEDIR = "/var/cache/dnf"        # inside the root; the package cache is mounted here
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class DnfSettings:
    """The dnf-specific decisions of a plan."""

    releasever: str
    rpmdb_path: str
    repo_gpgcheck: bool | None      # None: per repository (see repo_signed)
    weak_deps: bool
    nodocs: bool
    arch: str
    module_platform_id: str | None = None

    @classmethod
    def from_plan(cls, plan: Plan) -> DnfSettings:
        where = str(plan.template_file)
        dbpath = plan.var("rpmdb_path") or default_rpmdb(plan.distribution, plan.release)
        if not dbpath.startswith("/") or ".." in dbpath.split("/"):
            raise TemplateError(f"rpmdb_path {dbpath!r} is not an absolute path",
                                file=where, key="variables.rpmdb_path",
                                hint="e.g. /var/lib/rpm or /usr/lib/sysimage/rpm")
        check = (plan.var("repo_gpgcheck") or "").lower()
        if check and check not in TRUE + FALSE:
            raise TemplateError(f"repo_gpgcheck {check!r} is not a boolean",
                                file=where, key="variables.repo_gpgcheck",
                                hint="use 1 (repomd.xml is signed) or 0")
        return cls(releasever=plan.var("releasever", plan.release) or plan.release,
                   rpmdb_path=dbpath.rstrip("/") or DEFAULT_RPMDB,
                   repo_gpgcheck=(check in TRUE) if check else None,
                   weak_deps=plan.options.weak_deps, nodocs=plan.options.trim_docs,
                   arch=plan.target_arch,
                   module_platform_id=plan.var("module_platform_id"))


# Where rpm keeps its database, for distributions that moved it to
# /usr/lib/sysimage/rpm: (distribution, first release that did).
SYSIMAGE_SINCE = {"fedora": 36, "almalinux": 10, "rocky": 10, "centos": 10, "rhel": 10}


def default_rpmdb(distribution: str, release: str) -> str:
    since = SYSIMAGE_SINCE.get(distribution)
    major = release.split(".")[0]
    if since is not None and major.isdigit() and int(major) >= since:
        return "/usr/lib/sysimage/rpm"
    return DEFAULT_RPMDB


def repo_signed(settings: DnfSettings, repo: Repository) -> bool:
    """Must this repository's repomd.xml carry a signature by a pinned key?"""
    if settings.repo_gpgcheck is not None:
        return settings.repo_gpgcheck
    if repo.url:
        return True
    if repo.metalink:
        return False                     # dnf checks repomd.xml against the metalink
    return not (repo.mirrorlist or "").startswith("https://")


def repo_id(repo: Repository) -> str:
    """A section name dnf accepts (letters, digits, - _ . :)."""
    ok = "".join(c if c.isalnum() or c in "-_.:" else "-" for c in repo.name)
    return ok or "repo"


def rpm_repos(plan: Plan) -> tuple[Repository, ...]:
    repos = tuple(r for r in plan.repositories if r.url or r.metalink or r.mirrorlist)
    if not repos:
        raise TemplateError("no repository with url, metalink or mirrorlist",
                            file=str(plan.template_file), key="repositories",
                            hint="a dnf template needs at least one RPM repository")
    return repos


def render_conf(plan: Plan, settings: DnfSettings, key_files: Sequence[Path], *,
                offline: bool = False) -> str:
    """dnf.conf text: [main] plus one section per repository.

    Every repository checks package signatures against exactly the pinned keys;
    nothing is read from the host's /etc/dnf or /etc/yum.repos.d.  Cached
    metadata never expires by age: the backend removes it when repo_state finds
    that a repository changed (see Dnf.prepare).
    """
    if not key_files:
        raise TemplateError("no pinned key for the rpm repositories",
                            file=str(plan.template_file), key="keys",
                            hint="a build never installs unverified packages: add the "
                                 "distribution's key with its fingerprint")
    main: dict[str, str] = {
        "gpgcheck": "1",
        "localpkg_gpgcheck": "1",
        "install_weak_deps": "1" if settings.weak_deps else "0",
        "tsflags": "nodocs" if settings.nodocs else "",
        "keepcache": "1",
        "cachedir": CACHEDIR,
        "metadata_expire": "-1",
        "skip_if_unavailable": "0",
        "best": "1",
        "plugins": "0",
        "countme": "0",
        "assumeyes": "1",
        "clean_requirements_on_remove": "0",
        "retries": "2",
        "timeout": "30",
    }
    if settings.module_platform_id:
        main["module_platform_id"] = settings.module_platform_id
    keys = " ".join(p.resolve().as_uri() for p in key_files)
    sections = [_section("main", main)]
    for repo in rpm_repos(plan):
        opts: dict[str, str] = {"name": repo.name}
        if repo.url:
            opts["baseurl"] = repo.url
        if repo.metalink:
            opts["metalink"] = repo.metalink
        if repo.mirrorlist:
            opts["mirrorlist"] = repo.mirrorlist
        opts.update({"enabled": "1", "gpgcheck": "1",
                     "repo_gpgcheck": "1" if repo_signed(settings, repo) else "0",
                     "gpgkey": keys})
        sections.append(_section(repo_id(repo), opts))
    return "\n".join(sections)


def _section(name: str, opts: Mapping[str, str]) -> str:
    for k, v in opts.items():
        if "\n" in v or "\r" in v:
            raise TemplateError(f"value of {k} in dnf section [{name}] has a line break",
                                key=f"repositories.{name}.{k}")
    return f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in opts.items())


def dnf_argv(settings: DnfSettings, *, conf: Path, root: Path, private: Path,
             offline: bool, host_arch: str) -> list[str]:
    """Global dnf options: the private configuration, the installroot and the
    release; never the host's repository or variable directories."""
    argv = ["dnf", "-y", "--color=never",
            f"--config={conf}", f"--installroot={root}",
            f"--releasever={settings.releasever}",
            f"--setopt=reposdir={private / 'repos.d'}",
            f"--setopt=varsdir={private / 'vars'}",
            "--noplugins"]
    if settings.arch != host_arch:
        argv.append(f"--forcearch={settings.arch}")
    if offline:
        argv.append("--cacheonly")
    return argv


def macros(settings: DnfSettings) -> str:
    """~/.rpmmacros for the private HOME dnf and rpm run with: puts the rpmdb
    where the target's own rpm looks for it."""
    return f"%_dbpath {settings.rpmdb_path}\n"


def cache_key(plan: Plan, settings: DnfSettings) -> str:
    """Names the dnf cache directory of this package universe (repositories,
    release and architecture), shared by every set of a distribution."""
    parts = [settings.releasever, settings.arch]
    for r in rpm_repos(plan):
        parts.append(f"{r.name} {r.url} {r.metalink} {r.mirrorlist}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"{plan.distribution}-{digest}"
