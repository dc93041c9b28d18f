"""Finding a CRIU that works on this host, and running it for a VE.

Which CRIU: ``$CRIU`` (a program, or a tools tree), else the tools tree vzpkg builds
(``tools/criu-tree``, default :data:`TREE`), else ``criu`` on PATH.  A candidate is
used only if ``criu check`` passes and it is at least :data:`MIN_VERSION`: Debian
12's criu 3.17 fails ``criu check`` on current kernels (vdso), and every criu before
4.2 fails to dump a TCP socket on Linux 6.16 and later (the kernel refuses
SO_PASSCRED on it).  A tools tree is a Debian tree with criu and its libraries,
run with the tree's own dynamic loader, so the host's libraries do not matter.

Who runs it: a VE's user namespace is made by the VE's own host uid (its owner),
and the kernel lets another process read a task's resource limits only with
CAP_SYS_RESOURCE over the task's user namespace.  A host without CAP_SYS_RESOURCE
(a container host) has it there only as the namespace's owner, so a dump runs as
that uid, keeping every other capability (:func:`_as_owner`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import ChkpntError, VeError

TREE = Path("/var/lib/vzpkg/tools/criu")
MIN_VERSION = (4, 2)
NS_GET_OWNER_UID = 0xB704
CAP_SYS_RESOURCE = 24
_SECBIT_NO_SETUID_FIXUP = 1 << 2
_SECBIT_KEEP_CAPS = 1 << 4
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2

HOW_TO_GET = ("build vzpkg's CRIU tools tree (a Debian tree with criu 4.2 or later, "
              f"about 30 MB, in {TREE}): tools/criu-tree; or point $CRIU at a criu "
              "4.2 or later that passes 'criu check'")


@dataclass(frozen=True)
class Criu:
    argv: tuple[str, ...]      # how to run it (a tree's loader, library path, binary)
    version: str
    where: str                 # for messages

    def run(self, args: Sequence[str], *, owner: int = 0, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """criu *args*; as host uid *owner* (with every capability kept) when not 0."""
        return subprocess.run([*self.argv, *args], capture_output=True, text=True,
                              check=False, timeout=timeout, env=env,
                              preexec_fn=(lambda: _as_owner(owner)) if owner else None)


    def popen(self, args: Sequence[str], *, owner: int = 0, pass_fds: Sequence[int] = ()
              ) -> subprocess.Popen[bytes]:
        """criu *args* in the background (as :meth:`run`), given the descriptors
        *pass_fds*; its output is discarded (it logs to its ``-o`` file)."""
        return subprocess.Popen([*self.argv, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                pass_fds=tuple(pass_fds), start_new_session=True,
                                preexec_fn=(lambda: _as_owner(owner)) if owner else None)


def _tree_argv(tree: Path) -> tuple[str, ...] | None:
    binary = tree / "usr/sbin/criu"
    for loader in ("usr/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2",
                   "usr/lib/ld-linux-aarch64.so.1", "lib/ld-linux-aarch64.so.1"):
        if (tree / loader).exists() and binary.exists():
            libs = ":".join(str(tree / d) for d in (
                "usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu",
                "usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu"))
            return (str(tree / loader), "--library-path", libs, str(binary))
    return None


def _candidates() -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []
    env = os.environ.get("CRIU")
    if env:
        p = Path(env)
        argv = _tree_argv(p) if p.is_dir() else (str(p),)
        if argv is None:
            raise ChkpntError(f"$CRIU={env} is a directory without usr/sbin/criu and a "
                              "dynamic loader", hint=HOW_TO_GET)
        return [(argv, f"$CRIU={env}")]
    tree = _tree_argv(TREE)
    if tree is not None:
        out.append((tree, f"the tools tree {TREE}"))
    path = shutil.which("criu")
    if path:
        out.append(((path,), path))
    return out


def _version(text: str) -> tuple[int, ...]:
    m = re.search(r"Version:\s*([0-9.]+)", text)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()


CHECKED = Path("/run/vzctl/criu-checked.json")


def _stamp(argv: tuple[str, ...]) -> str:
    """What a passed check holds for: the binary (and loader) as they are, this
    kernel, this boot."""
    parts = [os.uname().release]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    for a in argv:
        if a.startswith("/"):
            with contextlib.suppress(OSError):
                st = os.stat(a)
                parts.append(f"{a}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


REMEMBERED = 8          # CRIUs remembered at once (the tools tree, PATH's, $CRIU ...)


def _records() -> dict[str, dict[str, object]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(CHECKED.read_text())
        checked = data.get("checked") if isinstance(data, dict) else None
        if isinstance(checked, dict):
            return {str(k): v for k, v in checked.items() if isinstance(v, dict)}
    return {}


def _cached(argv: tuple[str, ...], where: str) -> Criu | None:
    rec = _records().get(json.dumps(argv))
    if isinstance(rec, dict) and rec.get("stamp") == _stamp(argv):
        return Criu(argv, str(rec.get("version")), where)
    return None


def _remember(c: Criu) -> None:
    """Note that *c* passed its check, beside the others noted (one CRIU's check,
    e.g. a wrapper's in a test, does not make the host check its usual one again)."""
    with contextlib.suppress(OSError):
        records = _records()
        key = json.dumps(c.argv)
        records.pop(key, None)
        records[key] = {"version": c.version, "stamp": _stamp(c.argv)}
        while len(records) > REMEMBERED:
            records.pop(next(iter(records)))
        CHECKED.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = CHECKED.with_name(f".{CHECKED.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"checked": records}))
        os.replace(tmp, CHECKED)


def find(error: type[VeError] = ChkpntError) -> Criu:
    """The CRIU to use; *error* (with what is missing and how to get it) if none.
    A candidate that passed ``criu check`` on this boot is not checked again
    (the check takes half a second, inside a migration's freeze)."""
    tried: list[str] = []
    for argv, where in _candidates():
        hit = _cached(argv, where)
        if hit is not None:
            return hit
        try:
            ver = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False)
        except OSError as exc:
            tried.append(f"{where}: cannot run it ({exc.strerror})")
            continue
        v = _version(ver.stdout)
        shown = ".".join(map(str, v)) or "unknown"
        if v < MIN_VERSION:
            tried.append(f"{where}: criu {shown} is too old (4.2 or later is needed: "
                         "older ones fail on this kernel's vdso or TCP sockets)")
            continue
        chk = subprocess.run([*argv, "check"], capture_output=True, text=True, timeout=60,
                             check=False)
        if chk.returncode != 0:
            last = (chk.stderr or chk.stdout).strip().splitlines()[-1:] or ["no output"]
            tried.append(f"{where}: 'criu check' fails: {last[0]}")
            continue
        found = Criu(argv, shown, where)
        _remember(found)
        return found
    what = "; ".join(tried) if tried else f"no criu on PATH, no tools tree in {TREE}, no $CRIU"
    raise error(f"no working CRIU on this host ({what})", hint=HOW_TO_GET)


def ns_owner(pid: int) -> int:
    """The host uid that owns *pid*'s user namespace (0: root's, or the host's own)."""
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(struct.unpack("I", fcntl.ioctl(fd, NS_GET_OWNER_UID, b"\0" * 4))[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def has_cap(cap: int) -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def _as_owner(uid: int) -> None:
    """In the child, before exec: become host uid *uid* keeping every capability
    (no fix-up of capabilities on the uid change, all of them ambient so that they
    survive exec).  Files are still made as root (fsuid 0)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("eff", ctypes.c_uint32), ("perm", ctypes.c_uint32),
                    ("inh", ctypes.c_uint32)]

    hdr = Hdr(0x20080522, 0)
    data = (Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for d in data:
        d.inh = d.perm
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    for cap in range(64):
        if data[cap // 32].perm >> (cap % 32) & 1:
            libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    if libc.prctl(_PR_SET_SECUREBITS, _SECBIT_NO_SETUID_FIXUP | _SECBIT_KEEP_CAPS,
                  0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "securebits")
    os.setresuid(uid, uid, uid)
    libc.setfsuid(0)


def errors_of(log: Path, limit: int = 6) -> str:
    """The Error lines of a CRIU log (what to tell the user)."""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                 if "Error" in ln and "RLIMIT_NOFILE" not in ln and "tun:" not in ln]
        return "; ".join(lines[-limit:])
    return ""
