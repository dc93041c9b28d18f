"""The temporary VE used while building.

Every command that touches a build root runs in the build's sandbox
(vzpkg.build.sandbox): fresh pid, mount, uts and ipc namespaces that die with the
build (``setpriv --pdeathsig KILL``, ``unshare --kill-child``), the tree made
the root by pivot_root with the host's root detached, the build's own network
namespace (loopback and the package proxy only), and the capabilities bounded
to what dpkg, rpm and maintainer scripts need.  Consequences:

* /proc, /sys and /dev are mounted for in-VE scripts *inside* that mount
  namespace only, so they vanish when the command ends: the host never sees
  them, and a build killed with SIGKILL leaves no mount behind;
* when vzpkg dies, ``unshare`` gets SIGKILL, its child (PID 1 of the new pid
  namespace) gets SIGKILL, and the kernel kills every process left in that
  namespace: daemons started by maintainer scripts cannot outlive the build;
* a script that chroots and climbs ``..``, or follows /proc/1/root, ends at
  the tree's own root; it cannot mount, make device nodes or reach the host's
  network.

In-VE scripts additionally get ``/usr/sbin/policy-rc.d`` (exit 101) so
Debian's invoke-rc.d starts no daemons.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from vzpkg.build.hookenv import with_stage
from vzpkg.build.sandbox import Command, Sandbox, Waiting
from vzpkg.core import mountinfo
from vzpkg.core.errors import BuildError, VzError
from vzpkg.template.model import Script

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildLog:
    """The build's log file; host commands run through it keep their output.

    *echo*, when given, receives every output line as it arrives (verbose mode).
    """

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.echo = echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, argv: Sequence[str] | Command, *, step: str,
            env: Mapping[str, str] | None = None, cwd: Path | None = None,
            hint: str | None = None, started: Callable[[], None] | None = None) -> None:
        """Run a command, output appended to the log; BuildError naming *step* if
        it fails, with the last lines of its output in the message.  *started* is
        called once the command runs."""
        self.write(f"$ {' '.join(_argv(argv))}")
        proc = self.spawn(argv, step=step, env=env, cwd=cwd)
        if started is not None:
            started()
        self.follow(proc, step=step, hint=hint)

    def spawn(self, argv: Sequence[str] | Command, *, step: str,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start a command whose output (stdout and stderr) :meth:`follow` reads."""
        full_env = {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
                    **(env or {})}
        fds = argv.pass_fds if isinstance(argv, Command) else ()
        try:
            return subprocess.Popen(_argv(argv), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=stdin,
                                    env=full_env, cwd=cwd, pass_fds=fds)
        except FileNotFoundError:
            raise BuildError(step, f"command not found: {_argv(argv)[0]}",
                             hint="run 'make setup' (tools/install-system-deps) to "
                                  "install the host tools") from None

    def follow(self, proc: subprocess.Popen[bytes], *, step: str,
               hint: str | None = None) -> None:
        """Append what *proc* prints to the log until it ends; BuildError naming
        *step* if it fails, with the last lines of its output in the message."""
        tail: deque[str] = deque(maxlen=25)
        assert proc.stdout is not None
        with self.path.open("ab") as log:
            for raw in proc.stdout:
                log.write(raw)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if self.echo:
                    self.echo(line)
        rc = proc.wait()
        if rc != 0:
            name = proc.args[0] if isinstance(proc.args, list) else str(proc.args)
            out = "\n    ".join(tail) if tail else "(no output)"
            raise BuildError(step, f"{name} exited with status {rc}; last output:\n"
                                   f"    {out}", log=str(self.path), hint=hint)


def _argv(argv: Sequence[str] | Command) -> list[str]:
    return list(argv.argv if isinstance(argv, Command) else argv)


def script_env(base: Mapping[str, str], stage: str) -> dict[str, str]:
    """*base* (vzpkg.build.hookenv.plan_env) with the variables of *stage*."""
    return with_stage(base, stage)


class BuildVE:
    """A build root prepared for running commands inside it.

    Entering installs policy-rc.d; leaving removes it.  Each :meth:`run` gets its
    own namespaces and mounts (see the module docstring), so nothing needs to be
    unmounted here.  *sandbox* is the build's (its network namespace); without
    one the VE makes its own and closes it on leaving.
    """

    POLICY = "usr/sbin/policy-rc.d"

    def __init__(self, root: Path, log: BuildLog, sandbox: Sandbox | None = None) -> None:
        self.root = root
        self.log = log
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self._own_sandbox = sandbox is None
        self._policy_added = False

    def __enter__(self) -> BuildVE:
        policy = self.root / self.POLICY
        if policy.parent.is_dir() and not policy.exists():
            policy.write_text("#!/bin/sh\n# installed by vzpkg during the build\nexit 101\n")
            policy.chmod(0o755)
            self._policy_added = True
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._policy_added:
            (self.root / self.POLICY).unlink(missing_ok=True)
        if self._own_sandbox:
            self.sandbox.close()

    def run(self, argv: Sequence[str], *, step: str,
            env: Mapping[str, str] | None = None, hint: str | None = None) -> None:
        """Run *argv* inside the VE; BuildError naming *step* on failure."""
        self.log.run(self.sandbox.ve(self.root, argv), step=step, env=env, hint=hint)

    def run_script(self, script: Script, env: Mapping[str, str],
                   started: StartedScript | None = None) -> None:
        """Copy *script* into the VE's /tmp and run it there (in *started*, if
        its namespaces were made ahead for this script)."""
        if started is not None and started.script is script:
            started.run()
            return
        fd, name = tempfile.mkstemp(prefix=".vzpkg-script-", dir=ve_tmp(self.root))
        with _script_copy(script, fd, name, 0o755):
            argv = _script_argv(script, "/tmp/" + Path(name).name)
            self.run(argv, step=script.stage.value, env=script_env(env, script.stage.value),
                     hint=_script_hint(script))


def ve_tmp(root: Path) -> Path:
    """The VE's /tmp as a host path, made if missing, where scripts are copied.
    Refused if it is a symbolic link: the host would follow it out of the VE."""
    tmp = root / "tmp"
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
        raise BuildError("script", f"{tmp} is not a directory (a link or a file); "
                                   "not copying a script through it",
                         hint="a package of the set makes /tmp something else than "
                              "a directory")
    tmp.mkdir(mode=0o1777, parents=True, exist_ok=True)
    return tmp


class StartedScript(Waiting):
    """An in-VE script whose namespaces, mounts and hostname are made ahead of
    time (while the package manager still works on the root): :meth:`run` then
    only writes the script and lets it start; :meth:`stop` ends it unused.

    Only for a backend whose package manager does not mind the VE's mount
    points (/proc, /sys, /dev, /run, /tmp) existing in the root while it runs.
    """

    def __init__(self, root: Path, log: BuildLog, script: Script,
                 env: Mapping[str, str], sandbox: Sandbox) -> None:
        self.root = root
        self.log = log
        self.script = script
        ve_tmp(root)
        self.name = f".vzpkg-script-{os.urandom(6).hex()}"
        cmd = sandbox.ve(root, _script_argv(script, "/tmp/" + self.name), wait=True)
        self.log.write(f"$ {' '.join(cmd.argv)}   (started ahead)")
        proc = log.spawn(cmd, step=script.stage.value,
                         env=script_env(env, script.stage.value), stdin=subprocess.PIPE)
        super().__init__(proc)

    def run(self) -> None:
        path = ve_tmp(self.root) / self.name       # again: the packages came since
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        with _script_copy(self.script, fd, path, 0o755):
            self.send(b"go")
            self.log.follow(self.proc, step=self.script.stage.value,
                            hint=_script_hint(self.script))


def run_host_script(script: Script, env: Mapping[str, str], log: BuildLog,
                    work: Path) -> None:
    """Run a host-side script (pre-cache, post-cache) from a private copy."""
    fd, name = tempfile.mkstemp(prefix="script-", dir=work)
    with _script_copy(script, fd, name, 0o700):
        argv = _script_argv(script, name)
        log.run(argv, step=script.stage.value, env=script_env(env, script.stage.value),
                cwd=work, hint=_script_hint(script))


@contextlib.contextmanager
def _script_copy(script: Script, fd: int, path: str | Path, mode: int) -> Iterator[None]:
    """*script*'s text written through *fd* (*path*, just made), mode *mode*;
    the file is removed when the block ends."""
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(script.text)
        os.chmod(path, mode)
        yield
    finally:
        Path(path).unlink(missing_ok=True)


def _script_argv(script: Script, path: str) -> list[str]:
    """How *script*, copied to *path*, runs: by its #! line, or by sh -e."""
    return [path] if script.text.startswith(b"#!") else ["/bin/sh", "-e", path]


def _script_hint(script: Script) -> str:
    where = str(script.path) if script.path else "the inline script in the template"
    return f"fix {where}; the previous cache was left untouched"


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount in our mount namespace."""
    return [(m.point, m.fstype) for m in mountinfo.read()]


def _below(mp: str, path: str) -> bool:
    return mp == path or mp.startswith(path.rstrip("/") + "/")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below *path* visible in our mount namespace."""
    prefix = str(path.resolve())
    return [mp for mp, _ in _mounts() if _below(mp, prefix)]


def fs_type(path: Path) -> str:
    """The file system type of the mount that holds *path* ("" if unknown)."""
    target = str(path.resolve())
    best, kind = -1, ""
    for mp, fs in _mounts():      # the deepest mount wins; of two on one point, the later
        if _below(target, mp) and len(mp) >= best:
            best, kind = len(mp), fs
    return kind


def remove_tree(path: Path) -> None:
    """rm -rf *path*, but first detach anything mounted below it (never delete
    through a mount into the host)."""
    if not path.exists():
        return
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    if mounts_under(path):
        raise BuildError("cleanup", f"{path} still has mounts below it; not removing it")
    shutil.rmtree(path, ignore_errors=False, onerror=_chmod_retry)


def _chmod_retry(func: Callable[..., object], p: str, _exc: object) -> None:
    try:
        os.chmod(os.path.dirname(p), 0o700)
        func(p)
    except OSError:
        pass


def cleanup_stale_work(work_dir: Path) -> list[Path]:
    """Remove work directories whose build process is gone."""
    removed: list[Path] = []
    if not work_dir.is_dir():
        return removed
    for d in work_dir.iterdir():
        pid = d.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(d)
            removed.append(d)
    return removed


def private_dir(d: Path) -> None:
    """Create *d* (mode 0700) or check that it is ours: it may sit in a
    world-writable place such as /dev/shm."""
    d.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise VzError(f"work directory {d} is not a private directory of this user",
                      hint="remove it, or set VZPKG_WORK_DIR to another directory")


_OPEN: set[Path] = set()     # work directories this process made and still uses


def open_work(work_dir: Path, name: str) -> Path:
    """This process's private directory for building *name*: made on the first
    call (removing what a killed build left behind), the same one on later calls
    until :func:`close_work` (so work may begin before the build itself does)."""
    private_dir(work_dir)
    work = work_dir / f"{name}.{os.getpid()}"
    if work not in _OPEN:
        cleanup_stale_work(work_dir)
        remove_tree(work)
        work.mkdir(parents=True)
        _OPEN.add(work)
    return work


def close_work(work: Path) -> None:
    _OPEN.discard(work)
    remove_tree(work)
