"""Make a minimal busybox root filesystem (for tests and demos; no network needed).

From Debian's ``busybox-static``: ``/bin/busybox``, one symlink per applet, and ``/etc/passwd`` and
``/etc/group`` with ``root`` and ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def make_busybox_rootfs(
    target: str,
    *,
    busybox: str = BUSYBOX,
    with_system_dirs: bool = True,
    passwd: str = PASSWD,
    group: str = GROUP,
) -> str:
    """Fill the directory ``target`` with a busybox root filesystem and return ``target``.

    ``with_system_dirs=False`` leaves out ``/proc``, ``/dev`` and ``/sys``: the runtime must create
    those mount points itself (the read-only-root case).
    """
    os.makedirs(target, exist_ok=True)
    dirs = ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var"]
    if with_system_dirs:
        dirs += ["proc", "dev", "sys"]
    for d in dirs:
        os.makedirs(os.path.join(target, d), exist_ok=True)
    os.chmod(os.path.join(target, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(target, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    for full in applets.stdout.split():
        # "--list-full" names where each applet lives (bin/ls, usr/bin/env, sbin/ip).
        link = os.path.join(target, full)
        if full == "bin/busybox" or os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
    _write(os.path.join(target, "etc", "passwd"), passwd)
    _write(os.path.join(target, "etc", "group"), group)
    return target


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
