"""The seccomp filter every VE process runs under.

A VE's root is the host's uid 0 with a reduced capability set (see caps.py); a
few system calls stay dangerous without any capability, because the kernel
checks ids, not capabilities, or because the object they reach is host-wide.
The filter refuses exactly those, and allows everything else:

- ``keyctl``, ``add_key``, ``request_key`` (ENOSYS): kernel keyrings are keyed
  by uid, so without a user namespace a VE's root shares the host root's user
  keyring and every other VE's; programs treat ENOSYS as "no keyring support";
- ``unshare`` and ``clone`` with CLONE_NEWUSER (EPERM): a nested user namespace
  with a 0->0 map gives every capability over new mount and cgroup namespaces,
  enough to mount cgroup controllers and lift the VE's own limits;
- ``clone3`` (ENOSYS): its flags sit in memory a filter cannot read; libc falls
  back to ``clone``, which is checked;
- ``ioctl`` TIOCSTI and TIOCLINUX (EPERM): pushing input into a terminal;
- any call of another ABI (x32, i386 via int 0x80) (ENOSYS): the numbers above
  would not match there.

The filter is installed while the process still holds CAP_SYS_ADMIN, just before
the capabilities are dropped, so it needs no no_new_privs; it is inherited by
every child and kept across execve.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from vzpkg.runtime import libc

CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

# offsets in struct seccomp_data
_NR = 0
_ARCH = 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i  # little-endian: the low 32 bits come first


@dataclass(frozen=True)
class _Abi:
    audit_arch: int
    x32_bit: int          # syscall numbers with this bit belong to another ABI (0: none)
    keyctl: int
    add_key: int
    request_key: int
    unshare: int
    clone: int
    clone3: int
    ioctl: int


_ABIS = {
    "x86_64": _Abi(0xC000003E, 0x40000000, 250, 248, 249, 272, 56, 435, 16),
    "aarch64": _Abi(0xC00000B7, 0, 219, 217, 218, 97, 220, 435, 29),
}


class _Asm:
    """A tiny classic-BPF assembler with forward jumps to named labels."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def ld(self, off: int) -> None:
        self.ins.append((_LD_W_ABS, 0, 0, off))

    def jmp(self, op: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.ins.append((op, jt, jf, k))

    def ret(self, k: int) -> None:
        self.ins.append((_RET_K, 0, 0, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.ins):
            out += struct.pack("HBBI", code, self._off(pc, jt), self._off(pc, jf), k)
        return bytes(out)

    def _off(self, pc: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        d = self.labels[target] - pc - 1
        assert 0 <= d < 256, target
        return d


def program(machine: str | None = None) -> bytes:
    """The filter for *machine* (default: this host's)."""
    abi = _ABIS.get(machine or os.uname().machine)
    if abi is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine or os.uname().machine}")
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    a = _Asm()
    a.ld(_ARCH)
    a.jmp(_JEQ_K, abi.audit_arch, 0, "enosys")
    a.ld(_NR)
    if abi.x32_bit:
        a.jmp(_JGE_K, abi.x32_bit, "enosys", 0)
    for nr in (abi.keyctl, abi.add_key, abi.request_key, abi.clone3):
        a.jmp(_JEQ_K, nr, "enosys", 0)
    a.jmp(_JEQ_K, abi.unshare, "flags0", 0)
    a.jmp(_JEQ_K, abi.clone, "flags0", 0)
    a.jmp(_JEQ_K, abi.ioctl, "ioctl", 0)
    a.ret(_RET_ALLOW)
    a.label("flags0")
    a.ld(_arg_low(0))
    a.jmp(_JSET_K, CLONE_NEWUSER, "eperm", 0)
    a.ret(_RET_ALLOW)
    a.label("ioctl")
    a.ld(_arg_low(1))
    a.jmp(_JEQ_K, TIOCSTI, "eperm", 0)
    a.jmp(_JEQ_K, TIOCLINUX, "eperm", 0)
    a.ret(_RET_ALLOW)
    a.label("eperm")
    a.ret(eperm)
    a.label("enosys")
    a.ret(enosys)
    return a.assemble()


_PROGRAM: bytes | None = None


def install() -> None:
    """Put this process (and everything it starts) under the VE filter."""
    global _PROGRAM
    if _PROGRAM is None:
        _PROGRAM = program()
    libc.seccomp_filter(_PROGRAM)
