"""The host's dnf for an RPM VE that has no dnf of its own (OpenVZ's vzyum).

The host's dnf is a host binary working on a VE's tree (``--installroot``).  It
never does so with host privileges:

* a child process builds a root of its own in a private mount namespace: a
  tmpfs with the host's ``/usr`` and ``/etc`` read-only, a ``/dev`` of four
  nodes, ``/tmp``, dnf's configuration (this command's, ``/vzpkg``) and the
  VE's root at ``/ve``, the idmapped mount the VE runs on; it pivots into it,
  so the host's root is out of reach;
* it joins a network namespace of its own in which only the host's package
  proxy is reachable (:class:`vzpkg.build.sandbox.BuildNet`);
* then it becomes the VE's root: it takes the VE's host ids and makes a user
  namespace mapping them to 0..65535, exactly as the VE's own root is.  Every
  path under ``/ve`` that dnf or rpm follows (a link the VE planted included)
  is followed with the VE's ids only: the host's files are as closed to it as
  to any unprivileged user, and ``/`` is read-only besides.  rpm's scriptlets
  run chrooted in ``/ve``.

Repositories are the VE's template's (host data, as vzyum used the template's
configuration), served through the proxy; packages are checked with the keys
in the VE's own rpm database (``gpgcheck=1``; no key is imported from
anywhere).  A held rpm lock is reported, never waited for.  A VE in the old
mode (``VE_USERNS=no``) has no id range to become, so the host's dnf is
refused for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.runtime import layout, libc
from vzpkg.runtime.derived import ids_of, layout_of
from vzpkg.runtime.idmap import IdRange

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

DNF = "/usr/bin/dnf"
RPM_LOCKS = ("/ve/var/lib/rpm/.rpm.lock", "/ve/usr/lib/sysimage/rpm/.rpm.lock")
LOCKED = 75
MS_REMOUNT = 32
MS_NOSUID = 2
MS_NODEV = 4


def dnf_conf(repos: list[list[str]]) -> str:
    lines = ["[main]", "gpgcheck=1", "localpkg_gpgcheck=1", "keepcache=0", "plugins=0",
             "skip_if_unavailable=0", "best=1", "countme=0", "install_weak_deps=0",
             "reposdir=/vzpkg/repos.d", ""]
    for name, url in repos:
        lines += [f"[{name}]", f"name={name}", f"baseurl={url}/", "enabled=1", "gpgcheck=1",
                  "metadata_expire=0", ""]
    return "\n".join(lines)


def dnf_argv(job: dict[str, Any]) -> list[list[str]]:
    """The commands to run in the sandbox for *job* (the last one's status counts)."""
    base = [DNF, "--installroot=/ve", "--config=/vzpkg/dnf.conf", "-q", "-y",
            f"--releasever={job.get('releasever') or '/'}"]
    pkgs = list(job["packages"])
    dry = ["--assumeno"] if job["dry_run"] else []
    op = job["op"]
    if op == "list":
        return [["rpm", "--root=/ve", "-qa", "--qf",
                 "PKG ii %{NAME} %{VERSION}-%{RELEASE} %{ARCH}\\n"]]
    if op == "install":
        return [[*base, *dry, "install", *pkgs]]
    if op == "remove":
        return [[*base, *dry, "--disablerepo=*", "remove", *pkgs]]
    if op == "info":
        return [[*base, "info", *pkgs]]
    if op == "update":
        return [[*base, *dry, "upgrade", *(["--security"] if job["security"] else []),
                 *pkgs]]
    return []       # check-updates: see _check_updates


def run(rt: Runtime, ctid: int, job: dict[str, Any]) -> tuple[int, str]:
    """Run *job* with the host's dnf on VE *ctid*'s tree: (status, output)."""
    cfg = rt.config(ctid)
    ids = ids_of(cfg)
    if ids is None:
        return 1, ("vzpkg: refused: the VE has no dnf of its own and runs in the old mode "
                   "(VE_USERNS=no): the host's dnf would work on its files as the host's "
                   "root; install dnf in the VE, or recreate it with --userns yes\n")
    if not shutil.which(DNF):
        return 1, "vzpkg: the VE has no dnf and neither has the host (apt-get install dnf)\n"
    if not job["repos"] and job["op"] not in ("list", "remove"):
        return 1, ("vzpkg: the VE has no dnf, and its OSTEMPLATE names no template whose "
                   "repositories the host's dnf could use\n")
    from vzpkg.build.sandbox import BuildNet
    root = rt.paths.ve_root(ctid)
    if not layout.is_mounted(root):     # a stopped VE (this worker's mount namespace)
        layout.mount(rt.paths, ctid, layout_of(cfg), ids)
    net = BuildNet()
    stage = Path(tempfile.mkdtemp(prefix="vzpkg-dnf-", dir="/run"))
    out = os.memfd_create("vzpkg-dnf")
    try:
        if job.get("proxy_port"):
            net.forward(int(job["proxy_port"]))
        (stage / "conf").mkdir()
        (stage / "conf/repos.d").mkdir()
        (stage / "conf/dnf.conf").write_text(dnf_conf(job["repos"]))
        (stage / "new").mkdir()
        code = _sandboxed(root, stage, ids, net.fd, out, job)
        os.lseek(out, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(out, 1 << 20):
            chunks.append(chunk)
        return code, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(out)
        net.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)


def _sandboxed(ve_root: Path, stage: Path, ids: IdRange, netns: int, out: int,
               job: dict[str, Any]) -> int:
    r_user, w_user = os.pipe2(os.O_CLOEXEC)
    r_maps, w_maps = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(r_user)
            os.close(w_maps)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.setsid()
            _build_root(ve_root, stage, netns)
            _become_ve_root(ids, w_user, r_maps)
            code = _inside(job)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"vzpkg: the host's dnf could not be set up: {exc}\n".encode())
        os._exit(code)
    os.close(w_user)
    os.close(r_maps)
    try:
        if os.read(r_user, 1) == b"u":
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{child}/{name}", "w", encoding="ascii") as f:
                    f.write(ids.map_line())
            os.write(w_maps, b"m")
    except OSError:
        pass                    # the child failed: it says why
    finally:
        os.close(r_user)
        os.close(w_maps)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _bind(src: str, dst: Path, *, ro: bool) -> None:
    libc.mount(src, str(dst), None, libc.MS_BIND | libc.MS_REC)
    if ro:
        libc.mount(None, str(dst), None,
                   libc.MS_BIND | MS_REMOUNT | libc.MS_RDONLY | MS_NOSUID)


def _build_root(ve_root: Path, stage: Path, netns: int) -> None:
    """As host root, in new mount (and the proxy's network) namespaces: the root
    described above, then pivot into it."""
    libc.setns(netns, libc.CLONE_NEWNET)
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    new = stage / "new"
    libc.mount("tmpfs", str(new), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for d in ("usr", "etc", "ve", "tmp", "proc", "dev", "vzpkg", "run", "var/tmp", ".old"):
        (new / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target is not None:
            (new / link).symlink_to(target)
    _bind("/usr", new / "usr", ro=True)
    _bind("/etc", new / "etc", ro=True)
    _bind(str(stage / "conf"), new / "vzpkg", ro=True)
    for node in ("null", "zero", "urandom", "random"):
        (new / "dev" / node).touch()
        libc.mount(f"/dev/{node}", str(new / "dev" / node), None, libc.MS_BIND)
    libc.mount("proc", str(new / "proc"), "proc", MS_NOSUID | MS_NODEV)
    libc.mount(str(ve_root), str(new / "ve"), None, libc.MS_BIND | libc.MS_REC)
    (new / "tmp").chmod(0o1777)
    (new / "var/tmp").chmod(0o1777)
    libc.pivot_root(str(new), str(new / ".old"))
    os.chdir("/")
    libc.umount2("/.old", libc.MNT_DETACH)
    os.rmdir("/.old")


def _become_ve_root(ids: IdRange, w_user: int, r_maps: int) -> None:
    """Take the VE's host ids, make a user namespace, have the host map it to the
    VE's 0..65535, and become its root (capabilities over nothing of the host)."""
    os.setgroups([])
    os.setresgid(ids.base, ids.base, ids.base)
    os.setresuid(ids.base, ids.base, ids.base)
    libc.unshare(libc.CLONE_NEWUSER)
    os.write(w_user, b"u")
    os.close(w_user)
    if os.read(r_maps, 1) != b"m":
        raise OSError("the host did not map the user namespace")
    os.close(r_maps)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _rpm_locked() -> bool:
    for p in RPM_LOCKS:
        try:
            fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
        finally:
            os.close(fd)
    return False


def _inside(job: dict[str, Any]) -> int:
    """In the sandbox, as the VE's root: run dnf (or rpm) for *job*."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/tmp",
           "TMPDIR": "/tmp"}
    if job["op"] in ("install", "remove", "update") and _rpm_locked():
        print("vzpkg: the rpm database is locked by another process (its .rpm.lock); "
              "nothing was changed", flush=True)
        return LOCKED
    print("vzpkg: package manager: the host's dnf (--installroot)", flush=True)
    # the VE's rpm database, where the VE's rpm keeps it (the host's rpm may default
    # to another place: Debian's to ~/.rpmdb)
    dbpath = next((d for d in ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
                   if any(os.path.exists(f"/ve{d}/{f}")
                          for f in ("rpmdb.sqlite", "Packages", "Packages.db"))),
                  "/var/lib/rpm")
    with open("/tmp/.rpmmacros", "w", encoding="utf-8") as f:
        f.write(f"%_dbpath {dbpath}\n")
    if job["op"] == "check-updates":
        return _check_updates(job, env)
    code = 0
    for argv in dnf_argv(job):
        if not job["dry_run"]:
            code = subprocess.run(argv, env=env, check=False).returncode
            continue
        # --assumeno: dnf shows the transaction, then says it aborted (status 1)
        r = subprocess.run(argv, env=env, check=False, capture_output=True, text=True)
        print(r.stdout + r.stderr, end="", flush=True)
        code = 0 if "Operation aborted" in r.stdout + r.stderr else r.returncode
    return code


def _check_updates(job: dict[str, Any], env: dict[str, str]) -> int:
    base = [DNF, "--installroot=/ve", "--config=/vzpkg/dnf.conf", "-q", "-y",
            f"--releasever={job.get('releasever') or '/'}"]
    r = subprocess.run([*base, "check-update"], env=env, capture_output=True, text=True,
                       check=False)
    print(r.stdout + r.stderr, end="", flush=True)
    if r.returncode not in (0, 100):
        return r.returncode
    sec = subprocess.run([*base, "updateinfo", "list", "--security"], env=env,
                         capture_output=True, text=True, check=False).stdout.split()
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) != 3 or "." not in f[0]:
            continue
        name = f[0].rsplit(".", 1)[0]
        q = subprocess.run(["rpm", "--root=/ve", "-q", "--qf", "%{VERSION}-%{RELEASE}",
                            name], env=env, capture_output=True, text=True, check=False)
        installed = q.stdout.strip() if q.returncode == 0 else "-"
        secure = any(s.startswith(f"{name}-") for s in sec)
        print(f"UPDATE {name} {installed} {f[1]} {f[2]}{' security' if secure else ''}",
              flush=True)
    return 0
