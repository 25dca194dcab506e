"""Kernel mounts through the ``mount(2)`` and ``umount2(2)`` system calls, and the mount table.

The system calls go through libc with ``ctypes`` rather than through ``mount(8)``: a build mounts and
unmounts twice per step, and a ``mount(8)`` process costs milliseconds where the call costs
microseconds. What ``mount(8)`` added is redone here: options are split into mount flags and the
filesystem's own data string as it does, a read-only bind mount is remounted read-only (the kernel
ignores ``ro`` on the first bind), and a failure is a ``MountFailure`` naming the command it stands
for, the errno and its likely cause.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Sequence

from buildsvc.executors.errors import MountFailure

_UNMOUNT_ATTEMPTS = 50
_UNMOUNT_RETRY_SECONDS = 0.05

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000
MNT_DETACH = 0x2

# The options mount(8) turns into flags: name -> (flags it sets, flags it clears). Any other option
# is the filesystem's (overlay's lowerdir=..., tmpfs's size=...) and goes in the data string.
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "mand": (MS_MANDLOCK, 0),
    "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "symfollow": (0, MS_NOSYMFOLLOW),
}

# statvfs f_flag bits -> mount flags: the per-mount flags a bind mount inherited, kept when it is
# remounted read-only (as mount(8) does; in a user namespace the kernel even requires it).
_KEPT_ON_REMOUNT = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

_libc = ctypes.CDLL(None, use_errno=True)
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int


def mount(fstype: str, source: str, target: str, options: Sequence[str] = ()) -> None:
    """Mount ``source`` of type ``fstype`` (``bind`` for a bind mount) on ``target``."""
    flags, data = parse_options(options)
    command = _describe(fstype, source, target, options)
    if fstype == "bind":
        _call_mount(source, target, None, MS_BIND, None, command)
        if flags:
            # A bind mount ignores its flags ("ro") until it is remounted with them.
            try:
                kept = _inherited_flags(target)
                _call_mount(None, target, None, MS_REMOUNT | MS_BIND | kept | flags, None, command)
            except BaseException:
                # Never leave a writable bind where a read-only one was asked for.
                _umount2(os.fsencode(target), MNT_DETACH)
                raise
        return
    _call_mount(source, target, fstype, flags, data, command)


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    """Split mount(8)-style ``options`` into mount flags and the filesystem's data string."""
    flags = 0
    data = []
    for option in options:
        known = _FLAG_OPTIONS.get(option)
        if known is None:
            data.append(option)
        else:
            flags = (flags | known[0]) & ~known[1]
    return flags, ",".join(data)


def unmount(target: str) -> None:
    """Unmount ``target`` if something is mounted there; retry while it is busy (a dying container
    may still hold it).
    """
    path = os.fsencode(target)
    for _ in range(_UNMOUNT_ATTEMPTS):
        if _umount2(path, 0) == 0:
            return
        err = ctypes.get_errno()
        # EINVAL: not a mount point; ENOENT: no such path. Either way nothing is mounted there.
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err != errno.EBUSY:
            raise MountFailure(target, f"umount {target}: {os.strerror(err)}")
        time.sleep(_UNMOUNT_RETRY_SECONDS)
    # Last resort: detach it so nothing is left in the table; the kernel frees it when idle.
    if _umount2(path, MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise MountFailure(target, f"umount --lazy {target}: {os.strerror(err)}")


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            points.append(_unescape(line.split(" ")[4]))
    return points


def is_mounted(path: str) -> bool:
    """Whether something is mounted exactly at ``path``."""
    if not os.path.lexists(path):
        # Nothing can be mounted on a path that does not exist: the snapshotters remove a mount
        # point when they unmount it, so the usual answer costs one stat, not a mount table read.
        return False
    return os.path.realpath(path) in mount_points()


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` (for tests and leak checks)."""
    real = os.path.realpath(path)
    return [p for p in mount_points() if p == real or p.startswith(real + "/")]


def _call_mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None, command: str
) -> None:
    encoded = None if data is None else os.fsencode(data)
    if encoded is not None and len(encoded) >= os.sysconf("SC_PAGE_SIZE"):
        # The kernel copies at most one page of options and would fail with a bare EINVAL.
        raise MountFailure(target, f"{command}: options are {len(encoded)} bytes, over one page")
    result = _mount(
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else os.fsencode(fstype),
        flags,
        encoded,
    )
    if result != 0:
        err = ctypes.get_errno()
        raise MountFailure(target, f"{command}: {os.strerror(err)}{_hint(err, fstype, source, target)}")


def _hint(err: int, fstype: str | None, source: str | None, target: str) -> str:
    # The kernel says only an errno; these are the causes mount(8) suggests for each.
    if err == errno.ENODEV and fstype is not None:
        return f" (the kernel does not support filesystem type {fstype!r})"
    if err == errno.ENOENT:
        missing = [
            p for p in (source, target) if p is not None and p.startswith("/") and not os.path.exists(p)
        ]
        return f" ({', '.join(missing)} does not exist)" if missing else ""
    if err == errno.ENOTDIR:
        return f" ({target} or the source is not a directory)"
    if err == errno.EINVAL:
        return " (bad option, source or target; the kernel log, dmesg, may name the cause)"
    if err == errno.EPERM:
        return " (needs root: CAP_SYS_ADMIN)"
    return ""


def _inherited_flags(target: str) -> int:
    f_flag = os.statvfs(target).f_flag
    return sum(mount_flag for st_flag, mount_flag in _KEPT_ON_REMOUNT if f_flag & st_flag)


def _describe(fstype: str, source: str, target: str, options: Sequence[str]) -> str:
    # The mount(8) command this call stands for, so an error reads like one.
    opts = f" -o {','.join(options)}" if options else ""
    if fstype == "bind":
        return f"mount --bind{opts} {source} {target}"
    return f"mount -t {fstype}{opts} {source} {target}"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
