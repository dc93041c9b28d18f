"""Which device nodes a VE may use: deny by default, allow the standard few.

A VE's /dev is a tmpfs its init fills with a handful of nodes, and the VE cannot
mknod (CAP_MKNOD is dropped).  But a node that appears there anyway (made by the
host, or left on a bind mount) must not open the host's disks or memory: the
device policy below is enforced by the kernel, for every process of the VE.

cgroup v1: the ``devices`` controller, ``devices.deny`` "a" then one
``devices.allow`` line per rule, written before any process joins (the kernel
refuses "a" on a group that has children).

cgroup v2: a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the VE's group
with ``BPF_F_ALLOW_MULTI`` (a program the VE might attach below can only refuse
more).  The program is a straight list of comparisons built from :data:`RULES`.

mknod ("m") is allowed only for the nodes the VE's init creates in its fresh /dev
(after it has joined the cgroup); the VE itself has no CAP_MKNOD.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups.base import read_text, write_file

ANY = -1


@dataclass(frozen=True)
class Rule:
    """Character device *major*:*minor* (ANY: every minor) with *access* ("rw", "rwm")."""

    name: str
    major: int
    minor: int
    access: str

    def v1_line(self) -> str:
        return f"c {self.major}:{'*' if self.minor == ANY else self.minor} {self.access}"


RULES: tuple[Rule, ...] = (
    Rule("null", 1, 3, "rwm"), Rule("zero", 1, 5, "rwm"), Rule("full", 1, 7, "rwm"),
    Rule("random", 1, 8, "rwm"), Rule("urandom", 1, 9, "rwm"), Rule("tty", 5, 0, "rwm"),
    Rule("console", 5, 1, "rw"), Rule("ptmx", 5, 2, "rw"), Rule("pts", 136, ANY, "rw"),
)


def v1_lines() -> list[str]:
    """What devices.list of a VE's group shows."""
    return [r.v1_line() for r in RULES]


def v1_in_place(group: Path) -> bool:
    """Whether v1 devices group *group* already has exactly the VE policy."""
    have = (read_text(group / "devices.list") or "").split("\n")
    return sorted(x for x in have if x) == sorted(v1_lines())


def v1_apply(group: Path, ctid: str) -> None:
    """Deny everything, then allow :data:`RULES`, on a v1 devices group without children."""
    if v1_in_place(group):
        return
    write_file(group / "devices.deny", "a", f"VE {ctid}: devices")
    for line in v1_lines():
        write_file(group / "devices.allow", line, f"VE {ctid}: devices")


# -- cgroup v2: eBPF ---------------------------------------------------------------------
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
DEVCG_DEV_CHAR = 2
ACC = {"m": 1, "r": 2, "w": 4}
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

# opcodes (linux/bpf.h, linux/bpf_common.h)
_LDX_W = 0x61       # BPF_LDX | BPF_MEM | BPF_W
_MOV64_K = 0xB7
_MOV64_X = 0xBF
_AND32_K = 0x54
_RSH32_K = 0x74
_JNE_K = 0x55
_JSET_K = 0x45
_EXIT = 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def bpf_program(rules: tuple[Rule, ...] = RULES) -> bytes:
    """The device program: r0 = 1 when (type, major, minor, access) matches a rule.

    The context is struct bpf_cgroup_dev_ctx {u32 access_type (access << 16 | type);
    u32 major; u32 minor}."""
    head = [
        _insn(_LDX_W, 2, 1, 0),          # r2 = access_type
        _insn(_MOV64_X, 3, 2),           # r3 = r2
        _insn(_AND32_K, 3, imm=0xFFFF),  # r3 = type
        _insn(_RSH32_K, 2, imm=16),      # r2 = access
        _insn(_LDX_W, 4, 1, 4),          # r4 = major
        _insn(_LDX_W, 5, 1, 8),          # r5 = minor
    ]
    blocks: list[list[tuple[int, int, int]]] = []   # (code, dst, imm) jumps, to "next"
    for r in rules:
        jumps = [(_JNE_K, 4, r.major)]
        if r.minor != ANY:
            jumps.append((_JNE_K, 5, r.minor))
        denied = sum(v for k, v in ACC.items() if k not in r.access)
        if denied:
            jumps.append((_JSET_K, 2, denied))
        blocks.append(jumps)
    body: list[bytes] = []
    # not a character device: the deny at the end
    rest = sum(len(b) + 2 for b in blocks)
    body.append(_insn(_JNE_K, 3, off=rest, imm=DEVCG_DEV_CHAR))
    for jumps in blocks:
        n = len(jumps)
        for i, (code, dst, imm) in enumerate(jumps):
            # skip the rest of this block's jumps and its "r0 = 1; exit"
            body.append(_insn(code, dst, off=(n - i - 1) + 2, imm=imm))
        body += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
    tail = [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(head + body + tail)


def _libc() -> ctypes.CDLL:
    """The C library this process already has loaded (find_library would run
    ldconfig, milliseconds per call)."""
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: bytes) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(): unknown syscall number on {os.uname().machine}")
    libc = _libc()
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = int(libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf,
                           ctypes.c_uint(len(attr))))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def fs_type(path: Path) -> int:
    """statfs(2)'s f_type of *path*; 0 when it cannot be read."""
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]
    libc = _libc()
    st = Statfs()
    if libc.statfs(os.fsencode(str(path)), ctypes.byref(st)) != 0:
        return 0
    return int(st.f_type) & 0xFFFFFFFF


def is_cgroup2(path: Path) -> bool:
    """Whether *path* is a directory of a cgroup2 file system (not a test tree)."""
    return fs_type(path) == CGROUP2_SUPER_MAGIC


def is_cgroup1(path: Path) -> bool:
    return fs_type(path) == CGROUP_SUPER_MAGIC


def v2_attach(group: Path, ctid: str) -> None:
    """Attach the device program to cgroup2 directory *group*."""
    code = bpf_program()
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name[16], ...
    load = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 1,
                       ctypes.sizeof(log), ctypes.addressof(log), 0, 0, b"vzpkg_devices")
    load = load.ljust(128, b"\0")
    what = f"VE {ctid}: the device policy (a cgroup v2 BPF program on {group})"
    try:
        prog = _bpf(BPF_PROG_LOAD, load)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip()
        raise VeError(f"{what}: cannot load it: {exc.strerror}"
                      + (f" ({detail.splitlines()[-1]})" if detail else ""),
                      hint="the kernel needs CONFIG_CGROUP_BPF (and bpf() must not be "
                           "blocked for root)") from None
    try:
        fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attach = struct.pack("<IIII", fd, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attach.ljust(32, b"\0"))
        finally:
            os.close(fd)
    except OSError as exc:
        hint = ("a program attached above the VE's group without BPF_F_ALLOW_MULTI "
                "forbids more" if exc.errno == errno.EPERM else None)
        raise VeError(f"{what}: cannot attach it: {exc.strerror}", hint=hint) from None
    finally:
        os.close(prog)
