"""The capabilities a VE keeps, and dropping everything else.

A VE's root is root inside its own namespaces only.  Its init and every command
``vzctl exec``/``enter`` starts run with the bounding, permitted, effective and
inheritable sets cut down to :data:`VE_CAPS`; nothing a VE runs can regain a
dropped capability, setuid binaries included.

Kept (:data:`VE_CAPS`) and why: file ownership and permission handling that a
normal root needs (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, SETPCAP,
SETFCAP, KILL, AUDIT_WRITE, SYS_CHROOT); the network of its own namespace
(NET_ADMIN, NET_BIND_SERVICE, NET_RAW); IPC_LOCK for mlock within its memory
limit.

Dropped, with the reason (:data:`DROPPED`):
"""

from __future__ import annotations

from vzpkg.runtime import libc, seccomp

CAP_NAMES: dict[str, int] = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
    "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28,
    "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

VE_CAPS: frozenset[str] = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "SETFCAP", "NET_BIND_SERVICE", "NET_ADMIN", "NET_RAW", "SYS_CHROOT", "AUDIT_WRITE",
    "IPC_LOCK",
})

DROPPED: dict[str, str] = {
    "SYS_ADMIN": "mount, swapon, namespaces, most host administration",
    "SYS_MODULE": "loading or removing kernel modules",
    "SYS_TIME": "setting the host clock",
    "SYS_BOOT": "reboot(2) and kexec",
    "SYS_RAWIO": "raw I/O ports and /dev/mem",
    "MKNOD": "creating device nodes (the VE's /dev is fixed at start)",
    "DAC_READ_SEARCH": "open_by_handle_at(2), which can escape a chroot",
    "SYS_PTRACE": "tracing processes regardless of ownership",
    "SYS_NICE": "real-time scheduling and negative nice values past CPUUNITS",
    "SYS_RESOURCE": "raising resource limits and overriding quotas",
    "SYS_PACCT": "process accounting for the host",
    "SYS_TTY_CONFIG": "vhangup and host tty configuration",
    "LINUX_IMMUTABLE": "setting immutable/append-only flags",
    "NET_BROADCAST": "unused broadcast privilege",
    "IPC_OWNER": "bypassing IPC permission checks",
    "LEASE": "file leases on files it does not own",
    "AUDIT_CONTROL": "configuring the host's audit system",
    "AUDIT_READ": "reading the host's audit log",
    "MAC_OVERRIDE": "overriding the host's MAC policy",
    "MAC_ADMIN": "changing the host's MAC policy",
    "SYSLOG": "the host kernel log",
    "WAKE_ALARM": "host wake-up alarms",
    "BLOCK_SUSPEND": "blocking host suspend",
    "PERFMON": "performance monitoring of the host",
    "BPF": "loading BPF programs",
    "CHECKPOINT_RESTORE": "checkpoint/restore of arbitrary processes",
}

__doc__ = (__doc__ or "") + "".join(
    f"\n- CAP_{name}: {why}" for name, why in sorted(DROPPED.items())) + "\n"


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except OSError:
        return max(CAP_NAMES.values())


LAST_CAP = _last_cap()  # read on the host, before any pivot_root


def ve_mask() -> int:
    mask = 0
    for name in VE_CAPS:
        mask |= 1 << CAP_NAMES[name]
    return mask


def drop_to_ve_set() -> None:
    """Cut this process's capabilities to :data:`VE_CAPS` (needs CAP_SETPCAP)."""
    keep = ve_mask()
    for cap in range(LAST_CAP + 1):
        if not keep & (1 << cap):
            try:
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != 22:  # EINVAL: the kernel does not know this one
                    raise
    libc.capset(keep, keep, 0)


def confine(*, no_new_privs: bool) -> None:
    """Everything a process does before it runs anything from a VE, in order:
    the seccomp filter (while CAP_SYS_ADMIN still allows it), the capability
    drop, and, for commands vzctl runs on the host's behalf, no_new_privs.

    The bounding set alone already keeps every process in the VE, setuid or not,
    within :data:`VE_CAPS`; no_new_privs is left off for init and ``enter`` so
    that setuid programs (sudo, passwd) work for the VE's own users.
    """
    seccomp.install()
    drop_to_ve_set()
    if no_new_privs:
        libc.set_no_new_privs()
