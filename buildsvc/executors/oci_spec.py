"""Build an OCI runtime spec (``config.json``) for one build step.

The defaults are the ones BuildKit gets from containerd's default Unix spec and then adjusts in
``executor/oci/spec.go`` and ``spec_unix.go``: new pid, ipc, uts, mount (and, unless the host's is
asked for, network) namespaces; the usual pseudo-filesystems; containerd's capability set; masked
and read-only ``/proc`` paths; a read-only ``/sys/fs/cgroup``. What BuildKit adds on top and this does
not (yet): the default seccomp profile, AppArmor, ``/etc/hosts`` and ``/etc/resolv.conf`` binds.
"""

from __future__ import annotations

import fcntl
import os
import resource
import struct
import termios
from dataclasses import dataclass
from typing import Any

from buildsvc.executors.errors import InvalidPath, InvalidProcessSpec
from buildsvc.executors.paths import clean_container_path, resolve_in_root
from buildsvc.executors.users import ResolvedUser, resolve_user
from buildsvc.solver.worker import (
    DEFAULT_PATH,
    ExecSpec,
    Mount,
    MountKind,
    NetworkMode,
    SnapshotMount,
)

OCI_VERSION = "1.0.2"
DEFAULT_HOSTNAME = "buildsvc"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
"""containerd's default set, which BuildKit runs build steps with (outside ``security=insecure``)."""

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecOptions:
    """Executor-wide settings that are not part of a build step."""

    default_hostname: str = DEFAULT_HOSTNAME
    """Used when the step names no hostname."""
    cgroups_path: str | None = None
    """``linux.cgroupsPath``; ``None`` leaves the choice to the runtime."""
    nofile: tuple[int, int] | None = None
    """Soft and hard ``RLIMIT_NOFILE``; ``None`` copies the daemon's own limits (what BuildKit's
    containers inherit). Raising the hard limit needs ``CAP_SYS_RESOURCE``."""


def build_spec(spec: ExecSpec, options: SpecOptions | None = None) -> dict[str, Any]:
    """Return the OCI runtime spec for ``spec`` as a JSON-ready dict.

    Reads the rootfs only to resolve the user from its ``/etc/passwd`` and ``/etc/group``.
    """
    options = options or SpecOptions()
    process = spec.process
    if not process.args:
        raise InvalidProcessSpec("args", "a process needs at least one argument")
    user = resolve_user(spec.rootfs.path, process.user)
    hostname = spec.hostname or options.default_hostname
    soft, hard = options.nofile or resource.getrlimit(resource.RLIMIT_NOFILE)
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in _namespaces(spec.network)],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        # Deny every device; runtimes still allow the few they create (null, zero, tty...).
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if options.cgroups_path is not None:
        linux["cgroupsPath"] = options.cgroups_path
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            # With a terminal the runtime makes the process a pty of its own and copies between
            # it and its stdio (our terminal's slave), resizing it on SIGWINCH (see runtime.py).
            "terminal": spec.terminal is not None,
            "user": _user(user),
            "args": list(process.args),
            "env": build_env(process.env),
            "cwd": clean_container_path(process.cwd, what="working directory"),
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}],
            "noNewPrivileges": False,
        },
        "root": {"path": spec.rootfs.path, "readonly": spec.readonly_root},
        "hostname": hostname,
        "mounts": _dedup(default_mounts() + [user_mount(m) for m in sort_mounts(spec.mounts)]),
        "linux": linux,
    }
    if spec.terminal is not None:
        # The size the process's pty starts with: runc sets it from its stdio again, crun only
        # from here (a resize is set on the process's terminal by the executor).
        rows, cols = _window_size(spec.terminal.fd)
        if rows and cols:
            config["process"]["consoleSize"] = {"height": rows, "width": cols}
    return config


def _window_size(fd: int) -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return 0, 0
    return rows, cols


def build_env(env: tuple[str, ...]) -> list[str]:
    """Validate ``KEY=VALUE`` entries and add the default ``PATH`` when none is set."""
    for entry in env:
        key, sep, _ = entry.partition("=")
        if not sep or not key or "\x00" in entry:
            raise InvalidProcessSpec("env", f"{entry!r} is not KEY=VALUE")
    if any(e.startswith("PATH=") for e in env):
        return list(env)
    return [DEFAULT_PATH, *env]


def default_mounts() -> list[dict[str, Any]]:
    """The pseudo-filesystems every container gets (containerd's defaults, as BuildKit uses them)."""
    return [
        _m("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _m("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _m(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _m("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        _m("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _m("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _m("/sys/fs/cgroup", "cgroup", "cgroup", ["ro", "nosuid", "noexec", "nodev"]),
    ]


def sort_mounts(mounts: tuple[Mount, ...]) -> list[Mount]:
    """Order mounts so a parent destination is mounted before anything below it."""
    return sorted(mounts, key=lambda m: clean_container_path(m.dest, what="mount destination").count("/"))


def user_mount(mount: Mount) -> dict[str, Any]:
    """The spec entry for one build mount; sources are checked and selectors kept inside them."""
    dest = clean_container_path(mount.dest, what="mount destination")
    if dest == "/":
        raise InvalidPath(mount.dest, "the root is the rootfs; it cannot be a mount destination")
    if mount.kind is MountKind.TMPFS:
        options = ["nosuid", "nodev", "mode=1777"]
        if mount.tmpfs_size is not None:
            if mount.tmpfs_size <= 0:
                raise InvalidProcessSpec("tmpfs_size", f"{mount.tmpfs_size} is not a positive size")
            options.append(f"size={mount.tmpfs_size}")
        if mount.readonly:
            options.append("ro")
        return _m(dest, "tmpfs", "tmpfs", options)
    readonly = mount.readonly
    if isinstance(mount.source, SnapshotMount):
        source = mount.source.path
        readonly = readonly or mount.source.readonly
    elif isinstance(mount.source, str):
        source = mount.source
    else:
        raise InvalidProcessSpec("mount source", f"a {mount.kind} mount at {dest} needs a source")
    if not os.path.isabs(source):
        raise InvalidPath(source, "a mount source must be an absolute host path")
    selector = clean_container_path(mount.selector, what="mount selector")
    if selector != "/":
        source = resolve_in_root(source, selector)
    if not os.path.exists(source):
        raise InvalidPath(source, f"the source of the mount at {dest} does not exist")
    return _m(dest, "bind", source, ["rbind", "ro" if readonly else "rw"])


def _namespaces(network: NetworkMode) -> list[str]:
    names = ["pid", "ipc", "uts", "mount"]
    if network is NetworkMode.NONE:
        names.append("network")
    return names


def _user(user: ResolvedUser) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        out["additionalGids"] = list(user.additional_gids)
    return out


def _m(dest: str, fstype: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": fstype, "source": source, "options": options}


def _dedup(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A later mount on the same destination replaces an earlier one (BuildKit's dedupMounts), so a
    # build may put its own tmpfs on /dev/shm; a default replaced keeps its place in the order.
    index: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for m in mounts:
        if m["destination"] in index:
            out[index[m["destination"]]] = m
        else:
            index[m["destination"]] = len(out)
            out.append(m)
    return out
