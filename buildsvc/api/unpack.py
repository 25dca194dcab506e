"""Unpacking a tar from a daemon into a directory of the client, without trusting the tar.

The ``type=local`` output reaches the client as a tar (``Content.Download``). Its entries are
written under DEST only: a name that is absolute or climbs with ``..`` is refused, every directory
on the way is opened with ``O_NOFOLLOW`` relative to its parent (a symlink already in DEST, or one
the tar made, is never followed), and every leaf is created in its parent's fd, replacing what was
there. Symlinks are made as symlinks with their target as given (an absolute target is the build's
own business: it is never followed here); hard links only join two entries under DEST. Modes,
times and (as root) owners are kept; directories get theirs after their contents are written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from buildsvc.errors import InvalidInput

__all__ = ["entry_parts", "unpack_tar"]

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def entry_parts(name: str) -> list[str]:
    """The path components of a tar entry's name (``[]`` for the root); InvalidInput if it escapes."""
    if name.startswith("/"):
        raise InvalidInput(f"output entry {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"output entry {name!r} climbs out of its directory (..)")
    return parts


@dataclass(frozen=True, slots=True)
class _DirMeta:
    parts: tuple[str, ...]
    member: tarfile.TarInfo


def unpack_tar(tar_path: Path, dest: Path) -> int:
    """Write the entries of the tar at ``tar_path`` under ``dest`` (created); returns their count."""
    dest.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs: list[_DirMeta] = []
    count = 0
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                parts = entry_parts(member.name)
                if not parts:
                    continue  # the root itself: DEST keeps its own metadata
                with _parent(root_fd, parts, create=True) as parent:
                    _write_entry(tar, member, root_fd, parent, parts, as_root)
                if member.isdir():
                    dirs.append(_DirMeta(tuple(parts), member))
                count += 1
        # Deepest first: a read-only directory gets its mode after what is inside it was written.
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            with _parent(root_fd, list(d.parts), create=False) as parent:
                _set_meta(parent, d.parts[-1], d.member, as_root)
    finally:
        os.close(root_fd)
    return count


@contextmanager
def _parent(root_fd: int, parts: list[str], *, create: bool) -> Iterator[int]:
    """An fd of the directory holding ``parts``' leaf, each step opened without following links."""
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise InvalidInput(f"output entry {'/'.join(parts)}: {part} is missing") from None
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: i + 1])
                    raise InvalidInput(
                        f"output entry {'/'.join(parts)}: {where} is a symlink or not a directory "
                        "in the destination (not followed)"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _clear(parent: int, name: str, *, keep_dir: bool = False) -> None:
    """Remove what is at ``name`` (never following it), unless it is a directory and ``keep_dir``."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def _write_entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, parent: int, parts: list[str], as_root: bool
) -> None:
    name = parts[-1]
    if member.isdir():
        _clear(parent, name, keep_dir=True)  # what is left there is a directory: merged into
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        return  # its metadata once its contents are in
    _clear(parent, name)
    if member.isreg():
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        with os.fdopen(fd, "wb") as out:
            _copy(source, out)
    elif member.issym():
        os.symlink(member.linkname, name, dir_fd=parent)
    elif member.islnk():
        target = entry_parts(member.linkname)
        if not target:
            raise InvalidInput(f"output entry {member.name}: a hard link to the root")
        with _parent(root_fd, target, create=False) as source_dir:
            os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        return  # the same inode as its target, which has its metadata
    elif member.isfifo():
        os.mkfifo(name, 0o600, dir_fd=parent)
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        except PermissionError:
            return  # as tar does for a user who may not make devices
    else:
        raise InvalidInput(f"output entry {member.name}: unsupported tar entry type {member.type!r}")
    _set_meta(parent, name, member, as_root)


def _copy(source: IO[bytes], out: IO[bytes]) -> None:
    while data := source.read(_CHUNK):
        out.write(data)


def _set_meta(parent: int, name: str, member: tarfile.TarInfo, as_root: bool) -> None:
    """Owner (as root), mode and mtime of ``name``, on itself (a symlink is not followed)."""
    if as_root:
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
    if not member.issym():  # chmod after chown: chown clears setuid bits
        os.chmod(name, stat.S_IMODE(member.mode), dir_fd=parent, follow_symlinks=False)
    os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
