"""``<root>/cache/layers``: each committed snapshot's layer blob, made once per format, trusted after.

A committed snapshot never changes, so its diff over its parent is the same blob every time: an
export (or the background maker, :mod:`buildsvc.cache.ahead`) writes it once and later exports
link or copy it. A blob is written under a temporary name (never trusted: it has no note), renamed
into place, then described by a small JSON note. The note is trusted only while everything it
names still holds:

- the blob file has the size and mtime the note says (a layout it is hard-linked into shares the
  file, and an edit there changes the mtime);
- the snapshot has the identity the note says (its caller's, e.g. the overlay layer directory's
  inode and times: a key removed and made again is another snapshot);
- the machine has not restarted since (the boot id): blobs are not fsynced, so after a power loss
  a blob could be torn under a note that survived; then it is made again, never trusted.

The identity is taken before the blob is made and again after: a snapshot that changed meanwhile
gets no note, and the caller an error (``Conflict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsvc.cache.layers import LayerBlob
from buildsvc.errors import Conflict
from buildsvc.keyed_locks import KeyedLocks

__all__ = ["Identity", "LayerFormat", "LayerStore"]

Identity = Sequence[str | int | None]
"""What tells one committed snapshot from another under the same key (the caller decides what)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # no such file: a note is trusted by its other checks alone


_BOOT_ID = _boot_id()

_makers = KeyedLocks()


@dataclass(frozen=True, slots=True)
class LayerFormat:
    """How a layer is written: one blob per snapshot and format."""

    compression: str
    level: int | None
    oci: bool

    def name(self, snapshot: str) -> str:
        """The blob's file name stem for ``snapshot`` (as the first exports named them)."""
        return f"{snapshot.replace(':', '-')}.{self.compression}.{self.level}.{int(self.oci)}"


class LayerStore:
    """The layer blobs under one directory (threads and exports of one root share it)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def ready(self, snapshot: str, fmt: LayerFormat, identity: Identity) -> LayerBlob | None:
        """The trusted blob of ``snapshot`` (whose identity is ``identity`` now), or None."""
        name = fmt.name(snapshot)
        blob_path = self.dir / f"{name}.blob"
        try:
            doc = json.loads((self.dir / f"{name}.json").read_bytes())
            st = blob_path.stat()
            trusted = (
                isinstance(doc, dict)
                and st.st_size == doc["size"]
                and st.st_mtime_ns == doc.get("mtime_ns")
                and doc.get("snapshot") == list(identity)
                and doc.get("boot") == _BOOT_ID
            )
            if not trusted:
                return None
            return LayerBlob(
                path=blob_path,
                digest=doc["digest"],
                diff_id=doc["diff_id"],
                size=doc["size"],
                media_type=doc["media_type"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or a note torn by a crash: made again

    def get(
        self,
        snapshot: str,
        fmt: LayerFormat,
        identity: Callable[[], Identity],
        make: Callable[[Path], LayerBlob],
    ) -> LayerBlob:
        """The blob of ``snapshot``: the trusted one, or one ``make`` writes now (to the path given).

        One maker per blob at a time: a second caller waits for the first and takes its blob.
        """
        name = fmt.name(snapshot)
        with _makers.hold(str(self.dir / name)):
            before = list(identity())
            found = self.ready(snapshot, fmt, before)
            if found is not None:
                return found
            blob_path = self.dir / f"{name}.blob"
            partial = self.dir / f".{name}.{uuid.uuid4().hex[:8]}"
            try:
                blob = make(partial)
                if list(identity()) != before:
                    raise Conflict(f"snapshot {snapshot} changed while its layer was written")
                os.replace(partial, blob_path)
            finally:
                partial.unlink(missing_ok=True)
            doc = {
                "digest": blob.digest,
                "diff_id": blob.diff_id,
                "size": blob.size,
                "media_type": blob.media_type,
                "mtime_ns": blob_path.stat().st_mtime_ns,
                "snapshot": before,
                "boot": _BOOT_ID,
            }
            note = self.dir / f"{name}.json"
            tmp = note.with_name(f".{note.name}.{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, note)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return dataclasses.replace(blob, path=blob_path)  # made at the partial name, now renamed
