"""``type=local``: a layout directory as an export target and an import source."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from buildsvc.cache.config import CacheConfig, CacheConfigError, parse_config
from buildsvc.cache.imports import ImportLayer, ImportRecord, import_records
from buildsvc.cache.layers import LayerBlob
from buildsvc.cache.layout import LayoutStore, stat_identity
from buildsvc.cache.manifest import parse_root

__all__ = ["BlobAccess", "LocalSource", "LocalTarget", "is_compressed"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def is_compressed(magic: bytes) -> bool:
    """Whether a blob's first bytes are gzip's or zstd's (the unpacker sniffs the same way)."""
    return magic[:2] == _GZIP_MAGIC or magic[:4] == _ZSTD_MAGIC


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobAccess:
    """A layer blob ready to unpack: where it is, the bytes read to get it, and how it is checked."""

    path: Path
    read: int
    check_on_unpack: bool = False
    """Not hashed yet: the unpacker's diff-id check (diff id == digest) verifies it."""
    verified: bool = False
    """Hashed to its digest just now, as it was fetched (a plain tar's unpack need not hash it again)."""
    identity: tuple[int, ...] = ()
    """The file as it was when hashed ahead (``LocalSource.prefetch_after``): :meth:`changed` compares."""

    def changed(self) -> bool:
        """Whether the file hashed ahead has been replaced or written to since (check after using it)."""
        if not self.identity:
            return False
        try:
            return stat_identity(os.stat(self.path)) != self.identity
        except FileNotFoundError:
            return True


class LocalTarget:
    """Writes an export into a layout directory (created when missing), tagged ``tag``."""

    def __init__(self, dest: str, tag: str, *, link_blobs: bool = False) -> None:
        self.store = LayoutStore(dest, create=True)
        self.tag = tag
        self.link_blobs = link_blobs
        """Hard-link layer blobs in when they are on the same filesystem (see ``put_file``)."""

    def has_blob(self, digest: str) -> bool:
        """Whether the layout has the blob."""
        return self.store.has(digest)

    def put_blob(self, blob: LayerBlob) -> int:
        """Copy a layer blob in."""
        return self.store.put_file(blob.digest, blob.path, link=self.link_blobs)

    def put_bytes(self, data: bytes, media_type: str) -> int:
        """Store the config."""
        self.store.put_bytes(data)
        return len(data)

    def put_root(self, data: bytes, media_type: str) -> str:
        """Store the root document and tag it in ``index.json``."""
        digest = self.store.put_bytes(data)
        self.store.tag({"mediaType": media_type, "digest": digest, "size": len(data)}, self.tag)
        return digest


class LocalSource:
    """Reads a cache from a layout directory by ``tag`` or ``digest``."""

    def __init__(self, src: str, *, tag: str = "latest", digest: str = "") -> None:
        self.store = LayoutStore(src)
        self.where = f"{src} ({'@' + digest if digest else 'tag ' + tag})"
        entry = self.store.resolve(tag=tag, digest=digest)
        self.manifest_digest = str(entry["digest"])
        self.root = parse_root(self.store.read_blob(self.manifest_digest), self.where)
        self.config: CacheConfig = parse_config(self.store.read_blob(self.root.config.digest), self.where)
        self.records: list[ImportRecord] = import_records(self.config, self.root, self.where)
        self.bytes_read = self.root.config.size
        self._ahead: dict[str, Future[tuple[int, ...]]] = {}
        self._ahead_lock = threading.Lock()

    def prefetch(self, layers: Sequence[ImportLayer]) -> None:
        """Start hashing the blobs of ``layers`` (each once), the next ones of a chain being unpacked.

        Read only, no state changes, in the background: their digest checks overlap the unpack of the
        layer before them. :meth:`blob` then hands each over as verified, unless the file changed
        since it was hashed.
        """
        for layer in layers:
            with self._ahead_lock:
                if layer.blob in self._ahead:
                    continue
                future: Future[tuple[int, ...]] = Future()
                self._ahead[layer.blob] = future
            threading.Thread(
                target=self._hash_ahead, args=(layer, future), name="cache-prefetch", daemon=True
            ).start()

    def _hash_ahead(self, layer: ImportLayer, future: Future[tuple[int, ...]]) -> None:
        try:
            future.set_result(self.store.verified_identity(layer.blob, layer.size))
        except BaseException as e:  # blob() reports it (or checks the blob itself)
            future.set_exception(e)

    def check_present(self, digest: str, size: int) -> None:
        """``CacheConfigError`` when the layout lacks the blob or it has another size (no read)."""
        try:
            actual = self.store.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise CacheConfigError(str(self.store.path), f"layer blob {digest} is missing") from None
        if size and actual != size:
            raise CacheConfigError(
                str(self.store.path), f"layer blob {digest} is corrupt ({actual} bytes, not {size})"
            )

    def blob(self, digest: str, size: int, work: Path, diff_id: str = "") -> BlobAccess:
        """The layer blob in the layout, read in place (no copy), its size checked.

        A plain tar whose digest is its diff id (``compression=uncompressed``) is read once: the
        unpacker hashes every byte for the diff id anyway, so its check is the digest check and the
        caller discards the layer when it fails (``check_on_unpack``). Any other blob is hashed here
        first. A blob hashed ahead (:meth:`prefetch_after`) and unchanged since is verified already; one
        whose check failed ahead is checked again here, so the error is this call's.
        """
        path = self.store.blob_path(digest)
        with self._ahead_lock:
            ahead = self._ahead.pop(digest, None)
        if ahead is not None and ahead.exception() is None:
            identity = ahead.result()
            with contextlib.suppress(FileNotFoundError):
                if stat_identity(os.stat(path)) == identity:
                    return BlobAccess(path=path, read=identity[2], verified=True, identity=identity)
        try:
            with path.open("rb") as f:
                magic = f.read(4)
                actual = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise CacheConfigError(str(self.store.path), f"layer blob {digest} is missing") from None
        if size and actual != size:
            raise CacheConfigError(
                str(self.store.path), f"layer blob {digest} is corrupt ({actual} bytes, not {size})"
            )
        if diff_id == digest and not is_compressed(magic):
            return BlobAccess(path=path, read=actual, check_on_unpack=True)
        return BlobAccess(path=path, read=self.store.verify_blob(digest, size), check_on_unpack=False)
