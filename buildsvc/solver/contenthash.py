"""Content checksums of selected paths in a tree, for cache keys (after BuildKit's ``contenthash``).

``checksum(root, paths, include=..., exclude=...)`` digests exactly what a copy of those paths with
those patterns would take, so an edit to a file the copy does not take leaves the key unchanged.

What is digested, per selected path (in the order given, each wildcard's matches sorted): the match's
path inside ``root``, then one record per entry taken, depth first with names in byte order. A record
holds the path relative to the match, the type, the permission and special mode bits, uid and gid, and
the sha256 of a file's bytes, a symlink's target or a device's number. Not digested: times, xattrs,
inode numbers and hard-link structure, so the value is the same on every machine and every run.

Every path is resolved inside ``root``: ``..`` stops at ``root`` and symlinks (absolute, relative,
chained) are followed as if ``root`` were ``/``, so a selection never reads outside it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from buildsvc.errors import InvalidInput, NotFound
from buildsvc.solver.patterns import Selector, match_component, split_wildcards

__all__ = ["ContentNotFound", "FileDigests", "KnownFile", "checksum", "expand_path", "resolve_path"]

_FORMAT = b"buildsvc.contenthash.v1"
_MAX_SYMLINKS = 255
_CHUNK = 1 << 20


class ContentNotFound(NotFound):
    """A path selected for a checksum does not exist in the tree."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: no such file or directory")
        self.path = path


class _TooManyLinks(InvalidInput):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: too many levels of symbolic links")
        self.path = path


class KnownFile(Protocol):
    """A file of a frozen tree as the tree's maker recorded it (a context manifest's entry)."""

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of its bytes."""
        ...

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...


class FileDigests:
    """The sha256 of files that are never written again, by inode, so each is read once.

    Only for trees that do not change: committed snapshots and the context store's trees. A new tree
    hard-links the files it shares with the previous one, and a local source's snapshot links the
    tree's own, so the ``COPY`` that reads the source right after its key was taken, and a rebuild
    after a one-file edit, read the files that changed instead of all of them.

    A file is known by its device, inode, size and mtime; not its ctime, which every hard link to it
    moves. An inode number is reused only once its file is deleted, and these files are deleted only
    by a prune, which calls :meth:`forget` (an entry being made meanwhile is dropped, not kept).
    Files on an anonymous device (an overlay mount, tmpfs) are not kept: a later mount may get the
    same device number. Bounded (the oldest are forgotten first); safe to share between threads.
    """

    def __init__(self, max_entries: int = 32_768) -> None:
        self._max = max_entries
        self._known: OrderedDict[tuple[int, int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def __len__(self) -> int:
        return len(self._known)

    def digest(self, host: str, st: os.stat_result) -> bytes:
        """The sha256 of the regular file at ``host`` whose ``lstat`` is ``st``."""
        if os.major(st.st_dev) == 0:
            return _file_digest(host)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        found = self._known.get(key)
        if found is not None:
            return found
        generation = self._generation
        made = _file_digest(host)
        with self._lock:
            if generation == self._generation:  # no prune since the file was seen
                self._keep(key, made)
        return made

    def remember(self, st: os.stat_result, digest: bytes) -> bytes:
        """Keep ``digest`` as the sha256 of the file whose ``lstat`` is ``st``, known without reading
        it (its tree's maker wrote it from content of that digest and never writes it again).
        """
        if os.major(st.st_dev) != 0:
            with self._lock:
                self._keep((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), digest)
        return digest

    def _keep(self, key: tuple[int, int, int, int], digest: bytes) -> None:
        # Under the lock: the newest last, the oldest let go past the bound.
        self._known[key] = digest
        if len(self._known) > self._max:
            self._known.popitem(last=False)

    def forget(self) -> None:
        """Forget every digest: files were deleted, and their inode numbers may come back."""
        with self._lock:
            self._generation += 1
            self._known.clear()


def resolve_path(root: str, path: str, *, follow_last: bool = True) -> str:
    """Host path of ``path`` inside ``root``, following symlinks inside ``root`` only.

    With ``follow_last=False`` a symlink in the last component is kept (the link itself is meant).
    The last component need not exist.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if not pending and not follow_last:
            resolved.append(part)
            break
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise _TooManyLinks(path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *resolved) if resolved else root


def checksum(
    root: Path,
    paths: Sequence[str] = ("/",),
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_links: bool = False,
    digests: FileDigests | None = None,
    known: Mapping[str, KnownFile] | None = None,
) -> str:
    """``sha256:<hex>`` of the content selected under ``root`` (see the module docstring).

    ``paths`` may hold wildcards (``/src/*.py``); a wildcard matching nothing adds nothing, a literal
    path that does not exist raises :class:`ContentNotFound`. ``include``/``exclude`` are patterns
    relative to each selected path. ``follow_links`` follows a symlink named by ``paths`` itself (links
    inside the selection are always digested as links). ``digests``: where files' digests are kept
    between calls, for a ``root`` that is never written again (see :class:`FileDigests`). ``known``:
    with ``digests``, the files of such a ``root`` as its maker recorded them, by path relative to
    ``root`` (``paths`` must then be ``/``): one whose size and time match is not read.
    """
    if known is not None and (digests is None or tuple(paths) != ("/",)):
        raise ValueError("known file digests are for a whole frozen tree (paths '/', with digests)")
    top = os.path.abspath(root)
    selector = Selector(include, exclude)
    digest = hashlib.sha256()
    digest.update(_field(_FORMAT))
    for path in paths:
        matches = expand_path(top, path, follow_links=follow_links)
        if not split_wildcards(path)[1] and _lstat(matches[0][1]) is None:
            raise ContentNotFound(path)
        for container_path, host in matches:
            digest.update(_field(b"path") + _field(os.fsencode(container_path)))
            records: list[bytes] = []
            _visit(host, "", records, selector, digests, known, parent_included=False, top_level=True)
            for record in records:
                digest.update(record)
    return "sha256:" + digest.hexdigest()


def expand_path(root: str, path: str, *, follow_links: bool = False) -> list[tuple[str, str]]:
    """The (container path, host path) pairs ``path`` names inside ``root``, wildcards resolved.

    Without wildcards: one pair, whether or not it exists. With wildcards (``*``, ``?``, ``[..]`` as in
    Go's ``filepath.Match``, one component at a time): the existing matches, sorted; the literal prefix
    is followed if it is a symlink, symlinked directories between wildcard levels are not. With
    ``follow_links`` a symlink in the last component is followed (inside ``root``).
    """
    prefix, rest = split_wildcards(path)
    if not rest:
        return [(prefix, resolve_path(root, prefix, follow_last=follow_links))]
    level = [(prefix, resolve_path(root, prefix))]
    for depth, component in enumerate(rest):
        last = depth == len(rest) - 1
        found: list[tuple[str, str]] = []
        for container_dir, host_dir in level:
            try:
                names = sorted(os.listdir(host_dir), key=os.fsencode)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not match_component(component, name):
                    continue
                child = f"{container_dir.rstrip('/')}/{name}"
                host = os.path.join(host_dir, name)
                if last and follow_links:
                    host = resolve_path(root, child)
                elif not last and not stat.S_ISDIR(os.lstat(host).st_mode):
                    continue
                found.append((child, host))
        level = found
    return level


def _visit(
    host: str,
    rel: str,
    out: list[bytes],
    selector: Selector,
    digests: FileDigests | None,
    known: Mapping[str, KnownFile] | None,
    *,
    parent_included: bool,
    top_level: bool = False,
) -> None:
    st = _lstat(host)
    if st is None or stat.S_ISSOCK(st.st_mode):
        # Sockets are not content: a copy leaves them out, so the checksum does too.
        return
    is_dir = stat.S_ISDIR(st.st_mode)
    if top_level:
        # The selected path itself is always taken, as a copy takes its source; patterns apply below.
        keep, descend, included = True, is_dir, False
    else:
        verdict = selector.verdict(rel, is_dir=is_dir, parent_included=parent_included)
        keep, descend, included = verdict.keep, verdict.descend, verdict.fully_included
    if not keep and not descend:
        return
    own = _record(host, rel, st, digests, known)
    if not descend:
        out.append(own)
        return
    below: list[bytes] = []
    for name in sorted(os.listdir(host), key=os.fsencode):
        child_rel = f"{rel}/{name}" if rel else name
        _visit(os.path.join(host, name), child_rel, below, selector, digests, known, parent_included=included)
    # A directory only walked through (for a pattern deeper down) counts only if it holds something.
    if keep or below:
        out.append(own)
        out.extend(below)


def _record(
    host: str,
    rel: str,
    st: os.stat_result,
    digests: FileDigests | None,
    known: Mapping[str, KnownFile] | None,
) -> bytes:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind, payload = b"f", _regular_digest(host, rel, st, digests, known)
    elif stat.S_ISDIR(mode):
        kind, payload = b"d", b""
    elif stat.S_ISLNK(mode):
        kind, payload = b"l", os.fsencode(os.readlink(host))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = b"c" if stat.S_ISCHR(mode) else b"b"
        payload = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode()
    else:
        kind, payload = b"p", b""
    return b"".join(
        (
            _field(os.fsencode(rel)),
            _field(kind),
            _field(f"{stat.S_IMODE(mode):o}".encode()),
            _field(str(st.st_uid).encode()),
            _field(str(st.st_gid).encode()),
            _field(payload),
        )
    )


def _regular_digest(
    host: str,
    rel: str,
    st: os.stat_result,
    digests: FileDigests | None,
    known: Mapping[str, KnownFile] | None,
) -> bytes:
    if digests is None:
        return _file_digest(host)
    hint = known.get(rel) if known is not None else None
    if hint is not None and hint.size == st.st_size and hint.mtime_ns == st.st_mtime_ns:
        # Kept by inode too: the source's snapshot hard-links this file, and a COPY keys it next.
        return digests.remember(st, bytes.fromhex(hint.digest.removeprefix("sha256:")))
    return digests.digest(host, st)


def _file_digest(host: str) -> bytes:
    h = hashlib.sha256()
    # O_NOFOLLOW: the entry was seen as a regular file; never read through a link swapped in since.
    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def _field(data: bytes) -> bytes:
    # Length-prefixed, so no name or target (which may hold any byte but NUL and '/') is ambiguous.
    return len(data).to_bytes(8, "big") + data


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
