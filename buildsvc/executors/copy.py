"""Copying between trees the way BuildKit's file op does (after tonistiigi/fsutil ``copy/copy.go``).

Two layers:

- :class:`EntryWriter` writes one entry (directory, file, symlink, device, fifo) at a host path whose
  parent is already a real directory inside the destination root, with ``cp -a`` metadata (or the
  owner, mode and time an action asks for) and hard links kept within one operation. Merge and diff
  use it too.
- :func:`copy_action` is the ``copy`` file action: it resolves the source (wildcards, follow symlinks)
  inside the source root and the destination inside the destination root, decides between "copy as"
  and "copy into" like fsutil's ``prepareTargetDir``, selects entries with the include/exclude
  patterns, and writes them.

Nothing here follows a symlink on the host: every path is resolved inside its root first, and each
entry is written with ``lstat`` checks (an existing symlink at a target is replaced, never written
through). Failures raise :class:`PathProblem` naming the container path; ``fileops`` adds the action.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import NamedTuple

import zstandard

from buildsvc.executors.paths import resolve_in_root
from buildsvc.solver.contenthash import expand_path, resolve_path
from buildsvc.solver.ops import CopyAction
from buildsvc.solver.patterns import Selector, has_wildcards

__all__ = [
    "EntryWriter",
    "Metadata",
    "PathProblem",
    "Unsupported",
    "clean_path",
    "collect",
    "copy_action",
    "mkdir_all",
]

_ARCHIVE_MAGIC = (
    (0, b"\x1f\x8b"),  # gzip
    (0, b"BZh"),  # bzip2
    (0, b"\xfd7zXZ\x00"),  # xz
    (0, b"\x28\xb5\x2f\xfd"),  # zstd
    (257, b"ustar"),  # tar
)


class PathProblem(Exception):
    """A path an action names cannot be used; ``path`` is the container path, never a host path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Unsupported(PathProblem):
    """The action asks for something this implementation refuses (for example unpacking an archive)."""


def clean_path(path: str) -> str:
    """Clean ``path`` as an absolute container path, keeping a trailing ``/`` or ``/.``.

    Like BuildKit's ``cleanPath``: ``..`` stops at ``/``, and the trailing marker survives because it
    changes what a copy means ("into this directory", "the contents of this directory").
    """
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/.") and cleaned != "/":
        return cleaned + "/."
    if path.endswith("/") and cleaned != "/":
        return cleaned + "/"
    return cleaned


def _go_base(path: str) -> str:
    """Go's ``filepath.Base``: the last element, trailing slashes ignored; ``/`` for the root."""
    stripped = path.rstrip("/")
    return posixpath.basename(stripped) if stripped else "/"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _container(root: str, host: str) -> str:
    rel = os.path.relpath(host, root)
    return "/" if rel == "." else "/" + rel


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """What an action imposes on the entries it writes; ``None`` keeps the source's."""

    owner: tuple[int, int] | None = None
    mode: int | None = None
    timestamp_ns: int | None = None


def mkdir_all(root: str, host: str, *, mode: int, meta: Metadata) -> list[str]:
    """Create ``host`` (a resolved path inside ``root``) and its missing parents; return those created.

    New directories get ``mode`` exactly (no umask), the owner and the time in ``meta``; existing
    ones are left alone. A non-directory on the way is an error.
    """
    rel = os.path.relpath(host, root)
    if rel == ".":
        return []
    if rel.startswith(".."):
        raise PathProblem(host, "outside the root")  # a caller bug: resolution keeps paths inside
    created: list[str] = []
    current = root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        st = _lstat(current)
        if st is None:
            os.mkdir(current, 0o700)
            _apply(current, is_link=False, uid_gid=meta.owner, mode=mode, times=None)
            created.append(current)
        elif not stat.S_ISDIR(st.st_mode):
            raise PathProblem(_container(root, current), "not a directory")
    if meta.timestamp_ns is not None:
        for path in created:
            os.utime(path, ns=(meta.timestamp_ns, meta.timestamp_ns), follow_symlinks=False)
    return created


def _apply(
    path: str,
    *,
    is_link: bool,
    uid_gid: tuple[int, int] | None,
    mode: int | None,
    times: tuple[int, int] | None,
) -> None:
    # Order matters: chown clears setuid/setgid and file capabilities, so chmod and xattrs come after.
    if uid_gid is not None:
        os.chown(path, uid_gid[0], uid_gid[1], follow_symlinks=False)
    if mode is not None and not is_link:
        os.chmod(path, mode)
    if times is not None:
        os.utime(path, ns=times, follow_symlinks=False)


def _copy_xattrs(src: str | int, dst: str | int) -> None:
    """Copy the extended attributes of ``src`` to ``dst`` (host paths, not followed, or open files)."""
    # Best effort, as BuildKit's handler that only logs: a filesystem without xattrs is not an error.
    follow = isinstance(src, int)  # the descriptor's own file; a path is never followed
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError:
        return
    for name in names:
        if name.startswith("trusted.overlay."):
            continue  # overlayfs bookkeeping of the source's own layers, meaningless elsewhere
        try:
            value = os.getxattr(src, name, follow_symlinks=follow)
            os.setxattr(dst, name, value, follow_symlinks=isinstance(dst, int))
        except OSError:
            continue


def _copy_fds(src_fd: int, dst_fd: int, size: int, *, in_kernel: bool) -> bool:
    """Copy ``size`` bytes (the size the entry was collected with: an input snapshot does not change
    while it is copied) from ``src_fd`` to the new, empty ``dst_fd``.

    ``in_kernel``: try ``copy_file_range`` first (it shares extents on reflink filesystems and stays
    in the kernel elsewhere). Returns whether it is worth trying again between these filesystems:
    once it fails (EXDEV between an overlay mount and the host's disk, say; or no support) every
    file of the copy would fail it the same way, at three system calls each to rewind.
    """
    if in_kernel:
        try:
            copied = 0
            while n := os.copy_file_range(src_fd, dst_fd, max(size - copied, 1 << 20)):
                copied += n
                if copied >= size:
                    break
            return True
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        os.lseek(src_fd, 0, os.SEEK_SET)
        os.lseek(dst_fd, 0, os.SEEK_SET)
        os.ftruncate(dst_fd, 0)
    left = size
    while left > 0 and (chunk := os.read(src_fd, min(left, 1 << 20))):
        os.write(dst_fd, chunk)
        left -= len(chunk)
    return False


@dataclass(slots=True)
class EntryWriter:
    """Writes entries with their metadata; call :meth:`finish` at the end to set directory times."""

    root: str
    """The destination root (for error messages in container paths)."""
    meta: Metadata = field(default_factory=Metadata)
    always_replace: bool = False
    """Replace a directory by a file (or a file by a directory) instead of failing."""
    _links: dict[tuple[int, int], str] = field(default_factory=dict)
    _dir_times: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    _made: dict[str, int] | None = None
    """Directories made since :meth:`expect_new_dirs` -> the group an entry made in them is born with."""
    _uid: int = -1
    """Who an entry this process makes is born owned by (asked once, not per entry)."""
    link_files: bool = False
    """Hard link each non-directory entry to its source instead of copying it (see :meth:`write`)."""
    _no_copy_range: set[int] = field(default_factory=set)
    """Source devices ``copy_file_range`` to this root failed for (see ``_copy_fds``)."""

    def expect_new_dirs(self) -> None:
        """From here on, write entries into directories this writer makes knowing they are empty.

        A copy of one source collects each path once, parents first, so an entry whose parent this
        writer made has nothing to replace and is born owned by us: its lookup (``lstat``) and, when
        the wanted owner is ours, its ``chown`` are skipped, a third of the system calls of a copy of
        many small files. Called again for each source: another source may write into those dirs.
        """
        self._made = {}
        self._uid = os.geteuid()

    def _born(self, dst: str) -> tuple[int, int] | None:
        """The owner an entry made at ``dst`` gets, when its parent is a directory this writer made."""
        if self._made is None:
            return None
        gid = self._made.get(os.path.dirname(dst))
        return None if gid is None else (self._uid, gid)

    def write(self, src: str, st: os.stat_result, dst: str, *, overwrite_dir_metadata: bool = True) -> None:
        """Copy the entry at host path ``src`` (stat ``st``) to host path ``dst``."""
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return  # Sockets are not content; recreating one would need a listener.
        born = self._born(dst)
        existing = None if born is not None else _lstat(dst)
        if stat.S_ISDIR(mode):
            self._write_dir(st, dst, existing, overwrite_dir_metadata, born)
            if existing is None or overwrite_dir_metadata:
                _copy_xattrs(src, dst)
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                if not self.always_replace:
                    raise PathProblem(_container(self.root, dst), "cannot replace a directory with a file")
                shutil.rmtree(dst)
            elif (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                # Copying a file onto itself (same root): only the metadata can change. A linked
                # entry shares its source's inode, and so its metadata already.
                if not self.link_files:
                    self._set_metadata(dst, st)
                return
            else:
                os.unlink(dst)
        if self.link_files and self._link(src, dst):
            return
        if st.st_nlink > 1:
            first = self._links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, dst, follow_symlinks=False)
                return
            self._links[(st.st_dev, st.st_ino)] = dst
        if stat.S_ISREG(mode):
            self._write_file(src, st, dst, born)
            return
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        else:
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        self._set_metadata(dst, st, born=born)
        _copy_xattrs(src, dst)

    def _write_file(self, src: str, st: os.stat_result, dst: str, born: tuple[int, int] | None) -> None:
        """A new regular file: its content, then its owner, mode, xattrs and times, each set through
        the open files: through an overlay mount, walking ``dst``'s path again for every call costs
        more than the call itself (a copy of many small files is mostly these calls).
        """
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # An empty file has nothing to read: its source is not opened at all.
            src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) if st.st_size else None
            try:
                if src_fd is not None:
                    in_kernel = st.st_dev not in self._no_copy_range
                    if not _copy_fds(src_fd, dst_fd, st.st_size, in_kernel=in_kernel) and in_kernel:
                        self._no_copy_range.add(st.st_dev)
                # Order matters: chown clears setuid/setgid and file capabilities, so chmod and
                # xattrs come after; the times last.
                uid_gid, mode, times = self._wanted(st)
                if born != uid_gid:  # a new entry born with the wanted owner keeps it
                    os.fchown(dst_fd, uid_gid[0], uid_gid[1])
                os.fchmod(dst_fd, mode)
                _copy_xattrs(src if src_fd is None else src_fd, dst_fd)
                os.utime(dst_fd, ns=times)
            finally:
                if src_fd is not None:
                    os.close(src_fd)
        finally:
            os.close(dst_fd)

    def _link(self, src: str, dst: str) -> bool:
        """Make ``dst`` a hard link to ``src`` (the entry itself, a symlink not followed).

        Only for sources that are never written again (committed snapshots) and with no metadata
        to change (the entry *is* the source's inode: its owner, mode, times and xattrs are
        shared). False, to copy instead, across filesystems or past the link limit.
        """
        if self.meta != Metadata():
            return False
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                return False
            raise
        return True

    def _write_dir(
        self,
        st: os.stat_result,
        dst: str,
        existing: os.stat_result | None,
        overwrite: bool,
        born: tuple[int, int] | None,
    ) -> None:
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            if not self.always_replace:
                raise PathProblem(
                    _container(self.root, dst), "cannot replace a non-directory with a directory"
                )
            os.unlink(dst)
            existing = None
        made = existing is None
        if made:
            os.mkdir(dst, 0o700)
        elif not overwrite:
            return  # An existing destination directory keeps its own metadata (fsutil does the same).
        uid_gid, mode = self._set_metadata(dst, st, defer_times=True, born=born)
        if made and self._made is not None:
            # What an entry made in it is born with: our group, or the directory's when it is setgid.
            self._made[dst] = uid_gid[1] if mode & stat.S_ISGID else os.getegid()

    def _set_metadata(
        self,
        dst: str,
        st: os.stat_result,
        *,
        defer_times: bool = False,
        born: tuple[int, int] | None = None,
    ) -> tuple[tuple[int, int], int]:
        """Apply the owner, mode and times ``dst`` gets; returns the owner and mode it has."""
        is_link = stat.S_ISLNK(st.st_mode)
        uid_gid, mode, times = self._wanted(st)
        chown = None if born == uid_gid else uid_gid  # a new entry born with the wanted owner keeps it
        _apply(dst, is_link=is_link, uid_gid=chown, mode=mode, times=None if defer_times else times)
        if defer_times:
            self._dir_times.append((dst, times))
        return uid_gid, mode

    def _wanted(self, st: os.stat_result) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """The owner, mode and (atime, mtime) an entry copied from ``st`` gets."""
        uid_gid = self.meta.owner if self.meta.owner is not None else (st.st_uid, st.st_gid)
        mode = self.meta.mode if self.meta.mode is not None else stat.S_IMODE(st.st_mode)
        if self.meta.timestamp_ns is not None:
            return uid_gid, mode, (self.meta.timestamp_ns, self.meta.timestamp_ns)
        return uid_gid, mode, (st.st_atime_ns, st.st_mtime_ns)

    def finish(self) -> None:
        """Set the deferred directory times, innermost first (writing into a directory changes its mtime)."""
        for path, times in reversed(self._dir_times):
            os.utime(path, ns=times, follow_symlinks=False)
        self._dir_times.clear()


class _Entry(NamedTuple):  # a tuple: one is made per file copied
    rel: str
    host: str
    st: os.stat_result


def collect(host: str, selector: Selector) -> list[_Entry]:
    """Entries under (and including) ``host`` that the patterns take, parents before children.

    Collected before anything is written, so a copy within one root never sees its own output.
    """
    st = os.lstat(host)
    out = [_Entry("", host, st)]
    if stat.S_ISDIR(st.st_mode):
        _collect_below(host, "", selector, out, parent_included=False)
    return out


def _by_name(entry: os.DirEntry[str]) -> bytes:
    return os.fsencode(entry.name)


def _collect_below(
    host: str, rel: str, selector: Selector, out: list[_Entry], *, parent_included: bool
) -> None:
    with os.scandir(host) as listing:
        children = sorted(listing, key=_by_name)
    takes_all = selector.selects_all
    for entry in children:
        child = entry.path
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        if takes_all:  # no patterns: every entry, without a verdict object each
            out.append(_Entry(child_rel, child, st))
            if is_dir:
                _collect_below(child, child_rel, selector, out, parent_included=True)
            continue
        verdict = selector.verdict(child_rel, is_dir=is_dir, parent_included=parent_included)
        if not verdict.keep and not verdict.descend:
            continue
        if not verdict.descend:
            out.append(_Entry(child_rel, child, st))
            continue
        below: list[_Entry] = []
        _collect_below(child, child_rel, selector, below, parent_included=verdict.fully_included)
        if verdict.keep or below:
            out.append(_Entry(child_rel, child, st))
            out.extend(below)


def _looks_like_archive(host: str) -> bool:
    try:
        with open(host, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _ARCHIVE_MAGIC)


def copy_action(
    src_root: str, dst_root: str, action: CopyAction, meta: Metadata, *, link_files: bool = False
) -> None:
    """Run the copy ``action`` from ``src_root`` onto ``dst_root`` (see the module docstring).

    ``link_files``: ``src_root`` is never written again, nor what this copy writes: non-directory
    entries are hard linked, not copied (see :attr:`EntryWriter.link_files`; none is with ``meta``).
    """
    src = clean_path(action.src)
    dest = clean_path(action.dest)
    dest_plain = posixpath.normpath(dest) if dest != "/" else "/"
    # Sources first: an empty wildcard that is allowed leaves the destination untouched.
    if action.allow_wildcard and has_wildcards(src):
        sources = expand_path(src_root, src, follow_links=action.follow_symlinks)
        if not sources:
            if action.allow_empty_wildcard:
                return
            raise PathProblem(src, "no such file or directory (the pattern matched nothing)")
    else:
        sources = [(src, resolve_path(src_root, src, follow_last=action.follow_symlinks or src == "/"))]

    if not action.create_dest_path:
        parent = os.path.dirname(resolve_in_root(dst_root, dest_plain))
        if dest_plain != "/" and not os.path.isdir(parent):
            raise PathProblem(_container(dst_root, parent), "no such directory (and create_dest_path is off)")
    # A trailing '/' on dest means "this directory": create it; otherwise only its parent.
    ensure = dest if dest.endswith(("/", "/.")) else posixpath.dirname(dest_plain)
    mkdir_all(dst_root, resolve_in_root(dst_root, ensure), mode=0o755, meta=meta)
    dst_host = resolve_in_root(dst_root, dest_plain)

    selector = Selector(action.include_patterns, action.exclude_patterns)
    writer = EntryWriter(
        dst_root, meta=meta, always_replace=action.always_replace_existing, link_files=link_files
    )
    for container_src, src_host in sources:
        st_src = _lstat(src_host)
        if st_src is None:
            raise PathProblem(container_src, "no such file or directory")
        unpack = action.attempt_unpack and stat.S_ISREG(st_src.st_mode) and _looks_like_archive(src_host)
        if unpack and _unpack(src_host, dst_root, dst_host, writer, meta):
            continue
        target = _prepare_target(dst_root, src_host, st_src, container_src, dst_host, action, meta)
        entries = collect(src_host, selector)
        writer.expect_new_dirs()
        for entry in entries:
            dst = os.path.join(target, entry.rel) if entry.rel else target
            writer.write(entry.host, entry.st, dst, overwrite_dir_metadata=bool(entry.rel))
    writer.finish()


def _open_tar(host: str, stack: contextlib.ExitStack) -> tarfile.TarFile | None:
    """The tar archive in ``host`` (plain, gzip, bzip2, xz or zstd), or ``None`` when it is not one."""
    try:
        with open(host, "rb") as f:
            zstd = f.read(4) == b"\x28\xb5\x2f\xfd"
        if zstd:
            raw = stack.enter_context(open(host, "rb"))  # noqa: SIM115 (closed by the stack)
            stream = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw))
            return stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
        return stack.enter_context(tarfile.open(host, "r:*"))
    except (tarfile.ReadError, zstandard.ZstdError):
        return None  # compressed, but not a tar: copied as a file, as BuildKit does


def _unpack_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    # tarfile's "tar" filter refuses names and symlinked parents that leave the extraction directory;
    # hard links are checked here too. The archive's mode bits (setuid included) are kept, as Docker's
    # untar keeps them.
    if member.islnk():
        target = posixpath.normpath(member.linkname.lstrip("/"))
        if target == ".." or target.startswith("../"):
            raise tarfile.OutsideDestinationError(member, target)
    filtered = tarfile.tar_filter(member, path)
    return filtered.replace(mode=member.mode, deep=False)


def _unpack(src_host: str, dst_root: str, dst_host: str, writer: EntryWriter, meta: Metadata) -> bool:
    """ADD's auto-extract: the archive's entries into the directory ``dst_host``; ``False`` when the
    file is not a tar archive. Extracted into a scratch directory first (off the destination root, so
    nothing in it can be written through), then written with the action's owner and mode like a copy.
    """
    with contextlib.ExitStack() as stack:
        tar = _open_tar(src_host, stack)
        if tar is None:
            return False
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="buildsvc-unpack-"))
        try:
            tar.extractall(scratch, numeric_owner=True, filter=_unpack_filter)
        except (tarfile.TarError, OSError) as exc:
            name = os.path.basename(src_host)
            raise PathProblem(_container(dst_root, dst_host), f"unpacking {name}: {exc}") from exc
        mkdir_all(dst_root, dst_host, mode=0o755, meta=meta)
        for entry in collect(scratch, Selector())[1:]:  # the scratch directory itself is dest
            writer.write(entry.host, entry.st, os.path.join(dst_host, entry.rel))
    return True


def _prepare_target(
    dst_root: str,
    src_host: str,
    st_src: os.stat_result,
    container_src: str,
    dst_host: str,
    action: CopyAction,
    meta: Metadata,
) -> str:
    """Where the source goes: ``dest`` itself, or ``dest/<basename of src>`` (fsutil's rules)."""
    src_is_dir = stat.S_ISDIR(st_src.st_mode)
    try:
        dest_is_dir: bool | None = stat.S_ISDIR(os.stat(dst_host).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        dest_is_dir = None
    target = dst_host
    if (src_is_dir and not action.dir_contents_only and dest_is_dir is not None) or (
        not src_is_dir and dest_is_dir
    ):
        base = _go_base(container_src)
        if base not in ("/", "."):
            target = os.path.join(dst_host, base)
    at_root = os.path.normpath(target) == os.path.normpath(dst_root)  # nothing above the root to make
    parent = (
        target
        if at_root or (action.dir_contents_only and src_is_dir and dest_is_dir is None)
        else os.path.dirname(target)
    )
    mkdir_all(dst_root, parent, mode=0o755, meta=meta)
    return target
