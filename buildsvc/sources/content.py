"""A content-addressed blob store laid out as an OCI layout's ``blobs/sha256/<hex>``.

Blobs enter only through ``ingest``, which hashes while it writes to a temporary file and renames
it into place only when the digest (and size) match: a corrupt download is deleted, never seen by
a reader, and a crash leaves at most a stray temporary file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from buildsvc.sources.errors import DigestMismatch
from buildsvc.sources.reference import validate_digest

_CHUNK = 1 << 20


class ContentStore:
    """Verified blobs under ``root/blobs/sha256``."""

    def __init__(self, root: str) -> None:
        """Keep blobs under ``root`` (created when missing)."""
        self.root = os.path.abspath(root)
        self._dir = os.path.join(self.root, "blobs", "sha256")
        os.makedirs(self._dir, exist_ok=True)

    def path(self, digest: str) -> str:
        """Where the blob ``digest`` lives (whether or not it is there)."""
        validate_digest(digest, context=digest)
        return os.path.join(self._dir, digest.partition(":")[2])

    def has(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return os.path.isfile(self.path(digest))

    def read(self, digest: str) -> bytes:
        """The whole blob (small ones: manifests, configs), re-verified against its digest."""
        with open(self.path(digest), "rb") as f:
            data = f.read()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"stored blob {digest}", digest, actual)
        return data

    @contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """Open a stored blob for reading."""
        with open(self.path(digest), "rb") as f:
            yield f

    def ingest(self, digest: str, chunks: Iterable[bytes], *, size: int | None = None, what: str = "") -> str:
        """Store the bytes of ``chunks`` as ``digest``; raise ``DigestMismatch`` (storing nothing)
        when they hash differently or their length is not ``size``. Returns the blob's path.
        """
        target = self.path(digest)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".ingest-")
        try:
            hasher = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    written += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            actual = "sha256:" + hasher.hexdigest()
            label = what or f"blob {digest}"
            if actual != digest:
                raise DigestMismatch(label, digest, actual)
            if size is not None and written != size:
                raise DigestMismatch(label, f"{digest} ({size} bytes)", f"{actual} ({written} bytes)")
            os.rename(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target

    def put(self, data: bytes) -> str:
        """Store ``data`` under its own digest and return the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            self.ingest(digest, [data], size=len(data))
        return digest

    def read_chunks(self, digest: str) -> Iterator[bytes]:
        """The blob in chunks (for uploads)."""
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
