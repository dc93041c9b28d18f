"""Shifting a private area's owners into a VE's id range (``VE_IDMAP_MODE=shift``).

A user-namespaced VE normally sees its files through an idmapped mount
(:mod:`vzpkg.runtime.idmap`), and they stay on disk as the cache has them
(0..65535).  A file system that takes no idmapped mount (ramfs, some FUSE file
systems, older kernels' ones), or a host whose idmapped mounts are not to be
trusted, gets the other way: at create, every file's owner N becomes BASE+N on
disk, and the VE's root is then a plain bind mount.  What the shift does to each
entry of the tree:

* owner and group: ``lchown`` to BASE+N, never through a symlink; an id outside
  0..COUNT-1 (a cache has none) becomes the VE's ``nobody`` (65534), and such a file
  loses its setuid and setgid bits;
* the mode: chown clears setuid and setgid; they are put back as they were;
* POSIX ACLs (``system.posix_acl_access``, ``system.posix_acl_default``): the ids of
  their named user and group entries are shifted the same way;
* file capabilities (``security.capability``, which chown removes): written back as
  a version 3 capability whose root id is BASE+its old root id (a version 2
  capability's root is 0), so that they apply in the VE's user namespace and in no
  other;
* other extended attributes (``user.*``, ``trusted.*``, ``security.*`` but
  capabilities) are left as they are: none of them names an id.

The tree comes from a verified cache, but is handled as if someone hostile wrote
it: it is walked by directory descriptors (one level open at a time, as
:func:`vzpkg.core.fstree.remove_tree` does), directories are opened with
``O_NOFOLLOW``, every entry is changed relative to its directory's descriptor, and
no symlink is ever followed.  A hard-linked file is shifted once.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass, field

from vzpkg.runtime.idmap import IdRange

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
CAPS = "security.capability"
_ACL_USER, _ACL_GROUP = 0x02, 0x08
_ACL_VERSION = 2
_CAP_REVISION_MASK = 0xFF000000
_CAP_REVISION_2, _CAP_REVISION_3 = 0x02000000, 0x03000000
NOBODY = 65534
_SUGID = stat.S_ISUID | stat.S_ISGID


@dataclass
class Shifted:
    """What :func:`shift_tree` changed."""

    files: int = 0          # entries whose owner was shifted (directories too)
    acls: int = 0           # ACLs rewritten
    caps: int = 0           # file capabilities rewritten
    outside: int = 0        # entries with an id outside the range (given nobody)


@dataclass
class _Level:
    name: str
    ident: tuple[int, int]
    subdirs: list[str] = field(default_factory=list)


class _Shifter:
    def __init__(self, ids: IdRange) -> None:
        self.ids = ids
        self.done = Shifted()
        self.seen: set[tuple[int, int]] = set()    # hard-linked inodes already shifted

    def host_id(self, vid: int) -> tuple[int, bool]:
        """The host id of the VE's id *vid*, and whether *vid* was in the range."""
        if 0 <= vid < self.ids.count:
            return self.ids.base + vid, True
        return self.ids.base + min(NOBODY, self.ids.count - 1), False

    # -- one entry -----------------------------------------------------------------
    def entry(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        """Shift the non-directory *name* of the directory open as *dir_fd*."""
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        uid, uid_in = self.host_id(st.st_uid)
        gid, gid_in = self.host_id(st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            self._count(uid_in and gid_in)
            return
        # l*xattr on /proc/self/fd/DIR/NAME: the last component is never followed
        where = f"/proc/self/fd/{dir_fd}/{name}"
        xattrs = self._read(where, follow=False)
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        self._write(where, xattrs, follow=False)
        mode = stat.S_IMODE(st.st_mode)
        if not (uid_in and gid_in):
            mode &= ~_SUGID
        if st.st_mode & _SUGID or mode != stat.S_IMODE(st.st_mode):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if _ident(fd) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, f"{name!r} changed while it was shifted")
                os.chmod(f"/proc/self/fd/{fd}", mode)    # the inode itself, not a link
            finally:
                os.close(fd)
        self._count(uid_in and gid_in)

    def directory(self, fd: int) -> None:
        """Shift the directory open as *fd* itself."""
        st = os.fstat(fd)
        uid, uid_in = self.host_id(st.st_uid)
        gid, gid_in = self.host_id(st.st_gid)
        xattrs = self._read(fd, follow=True)
        os.fchown(fd, uid, gid)
        self._write(fd, xattrs, follow=True)
        mode = stat.S_IMODE(st.st_mode)
        if not (uid_in and gid_in):
            mode &= ~_SUGID
        if mode != stat.S_IMODE(os.fstat(fd).st_mode):
            os.fchmod(fd, mode)
        self._count(uid_in and gid_in)

    def _count(self, inside: bool) -> None:
        self.done.files += 1
        if not inside:
            self.done.outside += 1

    # -- extended attributes that name ids -------------------------------------------
    def _read(self, where: str | int, *, follow: bool) -> dict[str, bytes]:
        try:
            names = os.listxattr(where, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        out = {}
        for n in names:
            if n in (ACL_ACCESS, ACL_DEFAULT, CAPS):
                try:
                    out[n] = os.getxattr(where, n, follow_symlinks=follow)
                except OSError as exc:
                    if exc.errno != errno.ENODATA:
                        raise
        return out

    def _write(self, where: str | int, xattrs: dict[str, bytes], *, follow: bool) -> None:
        for n, value in xattrs.items():
            if n == CAPS:
                os.setxattr(where, n, self.shift_caps(value), follow_symlinks=follow)
                self.done.caps += 1
            else:
                os.setxattr(where, n, self.shift_acl(value), follow_symlinks=follow)
                self.done.acls += 1

    def shift_acl(self, value: bytes) -> bytes:
        """A POSIX ACL xattr with its named users' and groups' ids shifted."""
        if len(value) < 4 or (len(value) - 4) % 8:
            raise OSError(errno.EINVAL, f"a POSIX ACL of {len(value)} bytes")
        (version,) = struct.unpack_from("<I", value)
        if version != _ACL_VERSION:
            raise OSError(errno.EINVAL, f"a POSIX ACL of version {version}")
        out = bytearray(value)
        for off in range(4, len(value), 8):
            tag, perm, vid = struct.unpack_from("<HHI", value, off)
            if tag in (_ACL_USER, _ACL_GROUP):
                struct.pack_into("<HHI", out, off, tag, perm, self.host_id(vid)[0])
        return bytes(out)

    def shift_caps(self, value: bytes) -> bytes:
        """A file capability as version 3, its root id shifted (version 2: root 0)."""
        if len(value) < 20:
            raise OSError(errno.EINVAL, f"a file capability of {len(value)} bytes")
        (magic,) = struct.unpack_from("<I", value)
        rev = magic & _CAP_REVISION_MASK
        if rev == _CAP_REVISION_2:
            root = 0
        elif rev == _CAP_REVISION_3 and len(value) >= 24:
            (root,) = struct.unpack_from("<I", value, 20)
            # (as host root reads it, a v3 root id is already a host id when it is
            # outside the VE's ids; one inside 0..count-1 is the VE's)
        else:
            raise OSError(errno.EINVAL, f"a file capability of revision {rev >> 24}")
        new_magic = (magic & ~_CAP_REVISION_MASK) | _CAP_REVISION_3
        return (struct.pack("<I", new_magic) + value[4:20]
                + struct.pack("<I", self.host_id(root)[0]))


def shift_tree(path: str | os.PathLike[str], ids: IdRange) -> Shifted:
    """Shift every owner in the tree at *path* (a directory, not followed if a link)
    from 0..COUNT-1 to *ids*; what was changed."""
    sh = _Shifter(ids)
    top = os.open(os.fspath(path), _DIR_FLAGS)
    fd = top
    try:
        sh.directory(top)
        stack = [_Level(".", _ident(top), _scan(sh, top))]
        while stack:
            level = stack[-1]
            if level.subdirs:
                sub = level.subdirs.pop()
                try:
                    child = os.open(sub, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise OSError(errno.ESTALE, f"{sub!r} stopped being a directory "
                                                    "while it was shifted") from None
                    raise
                if fd != top:
                    os.close(fd)
                fd = child
                sh.directory(fd)
                stack.append(_Level(sub, _ident(fd), _scan(sh, fd)))
                continue
            stack.pop()
            if not stack:
                break
            up = top if len(stack) == 1 else os.open("..", _DIR_FLAGS, dir_fd=fd)
            if _ident(up) != stack[-1].ident:
                if up != top:
                    os.close(up)
                raise OSError(errno.ESTALE, "the tree was moved while it was shifted "
                                            f"(at {level.name!r})")
            if fd != top:
                os.close(fd)
            fd = up
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)
    return sh.done


def _scan(sh: _Shifter, fd: int) -> list[str]:
    """Shift every non-directory in the directory open as *fd*; its subdirectories."""
    with os.scandir(fd) as it:
        names = [e.name for e in it]
    subdirs: list[str] = []
    for name in names:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(name)
        else:
            sh.entry(fd, name, st)
    return subdirs


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
