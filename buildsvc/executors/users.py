"""Resolve a process's user against the root filesystem it runs on.

Like containerd's ``oci.WithUser`` as BuildKit uses it: ``uid``, ``uid:gid``, ``name``,
``name:group`` (and mixes). Names come from the rootfs's ``/etc/passwd`` and ``/etc/group``, read
through ``resolve_in_root`` so a symlinked ``/etc/passwd`` cannot point at the host's.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildsvc.executors.errors import UnknownUser
from buildsvc.executors.paths import resolve_in_root


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedUser:
    """Numeric ids for the OCI spec's ``process.user``."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def resolve_user(rootfs: str, user: str) -> ResolvedUser:
    """Turn ``user`` into numeric ids using the databases in ``rootfs``; empty means root."""
    if not user:
        return ResolvedUser(uid=0, gid=0)
    user_part, _, group_part = user.partition(":")
    passwd = _read_passwd(rootfs)
    entry: _PasswdEntry | None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((e for e in passwd if e.uid == uid), None)
    else:
        entry = next((e for e in passwd if e.name == user_part), None)
        if entry is None:
            raise UnknownUser(user, user_part, "/etc/passwd")
        uid = entry.uid
    groups = _read_group(rootfs)
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            group = next((g for g in groups if g.name == group_part), None)
            if group is None:
                raise UnknownUser(user, group_part, "/etc/group")
            gid = group.gid
        # An explicit group replaces the supplementary groups, as in Docker.
        return ResolvedUser(uid=uid, gid=gid)
    gid = entry.gid if entry is not None else 0
    extra: tuple[int, ...] = ()
    if entry is not None:
        extra = tuple(sorted({g.gid for g in groups if entry.name in g.members and g.gid != gid}))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=extra)


def _read_lines(rootfs: str, path: str) -> list[list[str]]:
    host_path = resolve_in_root(rootfs, path)
    try:
        with open(host_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _read_passwd(rootfs: str) -> list[_PasswdEntry]:
    entries = []
    for f in _read_lines(rootfs, "/etc/passwd"):
        if len(f) >= 4 and f[2].isdigit() and f[3].isdigit():
            entries.append(_PasswdEntry(f[0], int(f[2]), int(f[3])))
    return entries


def _read_group(rootfs: str) -> list[_GroupEntry]:
    entries = []
    for f in _read_lines(rootfs, "/etc/group"):
        if len(f) >= 3 and f[2].isdigit():
            members = tuple(m for m in f[3].split(",") if m) if len(f) >= 4 else ()
            entries.append(_GroupEntry(f[0], int(f[2]), members))
    return entries
