"""Kernel mounts through ``mount(8)``, and the host's mount table.

``mount(8)`` rather than ``mount(2)`` through ctypes: its error messages name the cause (a missing
filesystem type, a bad option), which is what a user needs when a worker cannot start.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from buildsvc.executors.errors import MountFailure

_UNMOUNT_ATTEMPTS = 50


def mount(fstype: str, source: str, target: str, options: Sequence[str] = ()) -> None:
    """Mount ``source`` of type ``fstype`` (``bind`` for a bind mount) on ``target``."""
    if fstype == "bind":
        cmd = ["mount", "--bind", source, target]
    else:
        cmd = ["mount", "-t", fstype, source, target]
    if options:
        cmd[1:1] = ["-o", ",".join(options)]
    _run(cmd, target)
    if fstype == "bind" and "ro" in options:
        # A bind mount ignores "ro" until it is remounted.
        _run(["mount", "-o", "remount,bind,ro", target], target)


def unmount(target: str) -> None:
    """Unmount ``target``; retry while it is busy (a dying container may still hold it)."""
    for _ in range(_UNMOUNT_ATTEMPTS):
        if not is_mounted(target):
            return
        done = subprocess.run(["umount", target], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if "busy" not in done.stderr:
            raise MountFailure(target, done.stderr.strip())
        time.sleep(0.05)
    # Last resort: detach it so nothing is left in the table; the kernel frees it when idle.
    _run(["umount", "--lazy", target], target)


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            points.append(_unescape(line.split(" ")[4]))
    return points


def is_mounted(path: str) -> bool:
    """Whether something is mounted exactly at ``path``."""
    return os.path.realpath(path) in mount_points()


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` (for tests and leak checks)."""
    real = os.path.realpath(path)
    return [p for p in mount_points() if p == real or p.startswith(real + "/")]


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


def _run(cmd: list[str], target: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise MountFailure(target, f"{cmd[0]} not found") from e
    if done.returncode != 0:
        raise MountFailure(target, done.stderr.strip() or f"{cmd[0]} exited {done.returncode}")
