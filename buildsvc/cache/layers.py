"""A snapshot's diff (its ``changes`` over its parent) written as a layer blob.

The tar is what OCI layers say: entries in the order of the changes (sorted by path), mtimes kept,
owners by number only; a deleted path is a ``.wh.NAME`` whiteout, a replaced directory (reported as
deleted then added at the same path) gets ``.wh..wh..opq`` inside it. The blob is compressed with
gzip (no name, no time), zstd or not at all, and hashed twice as it is written (the compressed
digest names the blob, the uncompressed one is the diff id), so nothing is read back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from buildsvc.solver.worker import Change, ChangeKind

__all__ = ["LayerBlob", "layer_media_type", "write_layer"]

_COPY_CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_MEDIA_TYPES = {
    (True, "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    (True, "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    (True, "uncompressed"): "application/vnd.oci.image.layer.v1.tar",
    (False, "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    (False, "uncompressed"): "application/vnd.docker.image.rootfs.diff.tar",
}


def layer_media_type(compression: str, oci: bool) -> str:
    """The layer media type for a compression, in the OCI or the Docker family."""
    return _MEDIA_TYPES[(oci, compression)]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerBlob:
    """A layer blob on disk."""

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def write_layer(
    root: Path | None,
    changes: Sequence[Change],
    dest: Path,
    *,
    compression: str = "gzip",
    level: int | None = None,
    oci: bool = True,
) -> LayerBlob:
    """Write the layer of ``changes`` (read from the snapshot mounted at ``root``) to ``dest``."""
    with dest.open("wb") as raw:
        compressed = _Hashing(raw)
        if compression == "gzip":
            gz = gzip.GzipFile(
                filename="",
                mode="wb",
                fileobj=compressed,
                mtime=0,
                compresslevel=6 if level is None else level,
            )
            plain = _Hashing(gz)  # type: ignore[arg-type]
            _write_tar(root, changes, plain)
            gz.close()
        elif compression == "zstd":
            cctx = zstandard.ZstdCompressor(level=3 if level is None else level)
            with cctx.stream_writer(compressed, closefd=False) as zw:  # type: ignore[arg-type]
                plain = _Hashing(zw)
                _write_tar(root, changes, plain)
        else:
            plain = compressed
            _write_tar(root, changes, plain)
    return LayerBlob(
        path=dest,
        digest=compressed.digest,
        diff_id=plain.digest,
        size=compressed.size,
        media_type=layer_media_type(compression, oci),
    )


def _write_tar(root: Path | None, changes: Sequence[Change], sink: _Hashing) -> None:
    tar = _TarWriter(sink)
    if root is not None:
        deleted: set[str] = set()
        for change in changes:
            rel = change.path.lstrip("/")
            if not rel:
                continue
            if change.kind is ChangeKind.DELETED:
                deleted.add(rel)
                continue
            host = root / rel
            _add(tar, host, rel)
            if rel in deleted and host.is_dir() and not host.is_symlink():
                # Deleted then added: a directory that replaced the one below (opaque).
                deleted.discard(rel)
                tar.add(_marker(f"{rel}/{OPAQUE_MARKER}"))
        for rel in sorted(deleted):
            parent, _, name = rel.rpartition("/")
            tar.add(_marker(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"))
    tar.close()


class _TarWriter:
    """A tar stream writer: tarfile's headers, file data copied in 1 MiB pieces.

    tarfile's own stream mode moves data in 10 KiB records through Python, which cost more than
    hashing it; here a header is ``TarInfo.tobuf`` (PAX) and a file's bytes go to the sink as read.
    """

    def __init__(self, sink: _Hashing) -> None:
        self.sink = sink
        self.written = 0
        self.buffer = bytearray(_COPY_CHUNK)
        # gettarinfo is a TarFile method that remembers inodes, so a file linked to one already in
        # this layer becomes a hard link entry: one TarFile (writing nowhere) per layer.
        self.infos = tarfile.TarFile(fileobj=io.BytesIO(), mode="w")

    def add(self, info: tarfile.TarInfo, source: BinaryIO | None = None) -> None:
        self._write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        if source is None or not info.isreg():
            return
        left = info.size
        view = memoryview(self.buffer)
        while left:
            n = source.readinto(view[: min(left, _COPY_CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise OSError(f"{info.name}: the file shrank while it was being written to a layer")
            self._write(view[:n])
            left -= n
        self._write(bytes(-info.size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        # Two zero blocks end the archive; tarfile pads the stream to whole records, so do we.
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        self._write(bytes(-self.written % tarfile.RECORDSIZE))

    def _write(self, data: bytes | memoryview) -> None:
        self.sink.write(data)
        self.written += len(data)


def _marker(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = 0
    info.mtime = 0
    info.mode = 0o644
    return info


def _add(tar: _TarWriter, host: Path, rel: str) -> None:
    info = tar.infos.gettarinfo(str(host), arcname=rel)
    if info is None:  # a socket: not in layers
        return
    info.uname = info.gname = ""
    if info.isreg():
        with host.open("rb", buffering=0) as f:
            tar.add(info, f)
    else:
        tar.add(info)
