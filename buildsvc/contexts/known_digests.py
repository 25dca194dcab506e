"""File digests remembered from the last scan of a directory, trusted while a file's stat is unchanged.

A rebuild sends the same context again: hashing every file of it each time costs ~0.1 ms a file
(a second for 10,000). As git's index and BuildKit's fsutil do, the sending side keeps, per scanned
directory, each regular file's ``(device, inode, size, mtime, ctime)`` and digest, and takes the
digest without reading the file when all five are the same. A write to a file changes its ctime
(which no user can set back), so a changed file is hashed again.

The one race: a file written in the same clock tick as the scan's ``lstat`` keeps that ctime. So a
file is remembered only when its mtime and ctime are older than the scan's start by ``RACY_NS``: one
changed just before (or during) a scan is hashed again next time too.

The notes live under ``$XDG_CACHE_HOME/buildsvc/known-digests/`` (``~/.cache`` by default), one JSON
file per directory and selection (include and exclude patterns); one that cannot be read or written is
simply not used. Per selection, because a scan forgets what it did not see: ``buildsvc build DIR``
scans DIR twice, as the context and for the Dockerfile alone, and with one note per directory the
second scan (two files) replaced the first's ten thousand every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RACY_NS", "KnownDigests"]

RACY_NS = 2_000_000_000
"""How much older than the scan a file's times must be to be remembered (the coarsest file-time
granularity of common filesystems, FAT's, is 2 s)."""

_Key = tuple[int, int, int, int, int]


class KnownDigests:
    """The digests of one directory's files by relative path, loaded from and saved to ``note``."""

    def __init__(self, note: Path | None) -> None:
        self.note = note
        self.started_ns = time.time_ns()
        self._old: dict[str, list[object]] = {}
        self._new: dict[str, list[object]] = {}
        if note is not None:
            try:
                loaded = json.loads(note.read_bytes())
                if isinstance(loaded, dict):
                    self._old = loaded
            except (OSError, ValueError):
                pass  # none yet, or unreadable: every file is hashed

    @classmethod
    def for_dir(cls, root: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> KnownDigests:
        """The notes of ``root`` (by its real path) scanned with these patterns, in this user's cache."""
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        selection = json.dumps([os.path.realpath(root), list(include), list(exclude)])
        name = hashlib.sha256(selection.encode()).hexdigest()[:32]
        return cls(base / "buildsvc" / "known-digests" / f"{name}.json")

    def lookup(self, rel: str, st: os.stat_result) -> tuple[str, int] | None:
        """The digest and size of the file at ``rel`` if it is as it was when remembered."""
        known = self._old.get(rel)
        if known is None or len(known) != 6 or known[:5] != list(_key(st)):
            return None
        digest = known[5]
        if not isinstance(digest, str):
            return None
        self._new[rel] = known
        return digest, st.st_size

    def remember(self, rel: str, st: os.stat_result, digest: str) -> None:
        """Note the digest of the file ``st`` describes (unless it changed too recently to trust)."""
        if max(st.st_mtime_ns, st.st_ctime_ns) > self.started_ns - RACY_NS:
            return
        self._new[rel] = [*_key(st), digest]

    def save(self) -> None:
        """Write what this scan saw (files it no longer saw are forgotten); errors are ignored."""
        if self.note is None or not (self._new or self._old):
            return  # nothing to remember and nothing to forget: no note for a directory of fresh files
        tmp = self.note.with_name(f".{self.note.name}.{os.getpid()}.tmp")
        try:
            self.note.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._new, separators=(",", ":")))
            os.replace(tmp, self.note)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
