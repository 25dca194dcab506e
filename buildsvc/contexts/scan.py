"""Scanning a directory into a manifest on the sending side (no daemon, no gRPC here).

The walk never follows a symlink, not even one inside the directory pointing elsewhere inside it:
a symlink is sent as a symlink (its target as read), and its target is the build's business.
Files are read with ``O_NOFOLLOW``, so a file swapped for a link during the scan is not read through.
Sockets, FIFOs and device nodes are left out (a build context has no use for them; ``docker build``
leaves sockets out too).

:class:`ScanRules` says which entries are taken, with the ``.dockerignore`` semantics of
:mod:`buildsvc.solver.patterns` (``!`` exceptions, ``**``, a matched directory takes everything below).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from buildsvc.contexts.known_digests import KnownDigests
from buildsvc.contexts.manifest import Entry, Manifest
from buildsvc.errors import InvalidInput
from buildsvc.solver.patterns import Selector

__all__ = ["Scan", "ScanRules", "scan_dir"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRules:
    """Which entries of a directory are sent: include patterns (none: all), then exclude patterns."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """A scanned directory: its manifest and, for each file digest, a file that has those bytes."""

    root: Path
    manifest: Manifest
    sources: Mapping[str, Path] = field(default_factory=dict)


def scan_dir(root: Path, rules: ScanRules = ScanRules(), *, known: KnownDigests | None = None) -> Scan:
    """Walk ``root`` (a directory) and hash what ``rules`` take.

    ``known``: digests from the last scan of ``root``, taken for files whose stat is unchanged;
    updated and saved with what this scan saw.
    """
    top = Path(os.path.abspath(root))
    if not top.is_dir():
        raise InvalidInput(f"{root} is not a directory")
    selector = Selector(rules.include, rules.exclude)
    entries: list[Entry] = []
    sources: dict[str, Path] = {}
    _walk(top, "", selector, False, entries, sources, known or KnownDigests(None))
    if known is not None:
        known.save()
    return Scan(root=top, manifest=Manifest.of(entries), sources=sources)


def _walk(
    directory: Path,
    rel: str,
    selector: Selector,
    parent_included: bool,
    out: list[Entry],
    sources: dict[str, Path],
    known: KnownDigests,
) -> None:
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except OSError as e:
        raise InvalidInput(f"cannot read directory {directory}: {e.strerror}") from None
    for name in names:
        path = directory / name
        child = f"{rel}/{name}" if rel else name
        _utf8(child, path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed while we walked: it is not part of what is sent
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            continue
        is_dir = stat.S_ISDIR(mode)
        verdict = selector.verdict(child, is_dir=is_dir, parent_included=parent_included)
        if not verdict.keep and not verdict.descend:
            continue
        if is_dir:
            own = _entry(child, "dir", st)
            if verdict.descend:
                below: list[Entry] = []
                _walk(path, child, selector, verdict.fully_included, below, sources, known)
                # A directory walked only for a deeper pattern is sent only when something below is.
                if verdict.keep or below:
                    out.append(own)
                    out.extend(below)
            else:
                out.append(own)
        elif stat.S_ISLNK(mode):
            target = os.readlink(path)
            _utf8(target, path, what="symlink target of")
            out.append(_entry(child, "symlink", st, target=target))
        else:
            found = known.lookup(child, st)
            if found is None:
                found = _hash_file(path)
                known.remember(child, st, found[0])
            digest, size = found
            sources.setdefault(digest, path)
            out.append(_entry(child, "file", st, digest=digest, size=size))


def _entry(
    rel: str, kind: str, st: os.stat_result, *, digest: str = "", size: int = 0, target: str = ""
) -> Entry:
    return Entry(
        path=rel,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=size,
        digest=digest,
        target=target,
    )


def _utf8(text: str, path: Path, *, what: str = "name of") -> None:
    # Names travel as JSON text: bytes that are not UTF-8 cannot be sent faithfully.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"the {what} {os.fsencode(path)!r} is not UTF-8 and cannot be sent") from None


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    try:  # read from the descriptor: a file object costs three more system calls a file
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest(), size
