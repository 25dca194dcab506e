"""Apply a layer tarball (gzip, zstd or plain) onto a snapshot directory, safely.

OCI whiteouts (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` hides everything the lower layers had
in its directory) are translated for the snapshot being filled:

- ``WhiteoutMode.OVERLAY`` writes them as overlayfs reads them in an upper directory: a 0/0
  character device per deleted name and ``trusted.overlay.opaque=y`` on opaque directories
  (the lower layers are not visible; this is containerd's overlay "apply to upperdir" path).
- ``WhiteoutMode.DELETE`` carries them out on a full tree (native snapshots, or a mounted
  overlay where the kernel makes its own whiteouts): real deletions.

Nothing is ever written outside ``target``: entries with absolute paths or ``..`` are refused,
parents are walked with ``lstat`` and a symlink (or non-directory) on the way is refused rather
than followed, files are created with ``O_NOFOLLOW | O_EXCL`` after removing what was there, and
hard links must name an earlier entry inside the tree. A refused entry fails the whole layer
(``UnsafeLayer``); the caller throws the half-filled snapshot away.

The uncompressed stream is hashed as it is read (a plain tar on disk: by a second thread while the
kernel copies file data out of it), so the result carries the layer's diff id and a layer whose
content does not match the image config's diff id is refused too.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from buildsvc.sources.errors import DigestMismatch, InvalidImage, UnsafeLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class WhiteoutMode(StrEnum):
    """How whiteouts reach the snapshot."""

    OVERLAY = "overlay"
    """Write overlayfs whiteouts (0/0 char devices, opaque xattr) into an upper directory."""
    DELETE = "delete"
    """Delete what they name from a full tree."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpackResult:
    """What applying one layer did."""

    diff_id: str
    """``sha256:`` of the uncompressed tar stream."""
    entries: int
    """Tar entries applied (whiteouts included)."""
    skipped_devices: int
    """Device nodes left out because we are not root."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HashingReader(io.RawIOBase):
    """Hashes and counts every byte read through it, so a digest costs no second pass."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self._hash.update(data)
        self.size += len(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        # Tar's trailing zero blocks are part of the digest but tarfile stops before them.
        while data := self._inner.read(_CHUNK):
            self._hash.update(data)
            self.size += len(data)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def apply_layer(
    blob_path: str,
    target: str,
    *,
    mode: WhiteoutMode,
    layer: str = "",
    expected_diff_id: str | None = None,
    verified_diff_id: str | None = None,
) -> UnpackResult:
    """Apply the layer blob at ``blob_path`` onto the directory ``target``.

    ``layer`` names the layer in errors (its digest). With ``expected_diff_id``, a layer whose
    uncompressed content hashes differently raises ``DigestMismatch`` (after it was applied: the
    caller must discard ``target``). ``verified_diff_id``: the caller has just checked that the blob
    hashes to it (a plain tar whose digest is its diff id, hashed as it was fetched); a plain tar is
    then not hashed again.
    """
    label = layer or os.path.basename(blob_path)
    with open(blob_path, "rb") as raw:
        applier = _Applier(os.path.realpath(target), mode, label)
        head = raw.read(4)
        raw.seek(0)
        with _readable_tar(label):
            if _is_compressed(head):
                diff_id = _apply_stream(raw, head, applier)
            else:
                diff_id = _apply_plain(raw, blob_path, applier, verified_diff_id)
        applier.finish()
    return _result(applier, label, diff_id, expected_diff_id)


def apply_layer_stream(
    stream: _Readable,
    target: str,
    *,
    mode: WhiteoutMode,
    layer: str,
    expected_diff_id: str | None = None,
) -> tuple[UnpackResult, str, int]:
    """Apply a layer blob read once from ``stream`` (a download) onto ``target``, never stored.

    Returns the result and the blob's own digest and size, hashed as it was read (every byte, the
    tar's trailing blocks included): the caller compares them with what it expected and discards
    ``target`` when they differ, as it does for a diff id mismatch (raised here).
    """
    raw = _HashingReader(stream)
    applier = _Applier(os.path.realpath(target), mode, layer)
    head = raw.read(4)
    with _readable_tar(layer):
        if _is_compressed(head):
            diff_id = _apply_stream(_Prefixed(head, raw), head, applier)
        else:
            with tarfile.open(fileobj=cast(IO[bytes], _Prefixed(head, raw)), mode="r|") as tar:
                for member in tar:
                    applier.apply(member, tar)
            diff_id = ""  # a plain tar's diff id is the blob's digest: known once drained
    applier.finish()
    raw.drain()
    digest = raw.digest()
    return _result(applier, layer, diff_id or digest, expected_diff_id), digest, raw.size


@contextmanager
def _readable_tar(label: str) -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as e:
        raise InvalidImage(label, f"layer is not a readable tar stream: {e}") from e


def _apply_stream(raw: _Readable, head: bytes, applier: _Applier) -> str:
    """A compressed tar, read in order: the decompressed bytes hashed as tarfile reads them."""
    reader = _HashingReader(_decompressed(raw, head))
    # tarfile's own 10 KiB record buffer, not a bigger one: its stream keeps what is left of the
    # buffer by slicing it after every read, so each 512-byte header copied up to the whole buffer.
    # With 1 MiB, a layer of 5,000 small files took 2.3x as long (benchmarks/unpack.py).
    with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
        for member in tar:
            applier.apply(member, tar)
    reader.drain()
    return reader.digest()


def _result(applier: _Applier, label: str, diff_id: str, expected_diff_id: str | None) -> UnpackResult:
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DigestMismatch(f"uncompressed layer {label}", expected_diff_id, diff_id)
    return UnpackResult(diff_id=diff_id, entries=applier.entries, skipped_devices=applier.skipped_devices)


def _apply_plain(raw: BinaryIO, blob_path: str, applier: _Applier, verified: str | None) -> str:
    """A plain tar on disk: headers read in place, file data copied by the kernel, hashed beside.

    The diff id is the hash of the whole file, so a second thread hashes it (hashlib releases the
    GIL) while this one reads headers and has the kernel copy each file's bytes from the blob
    (``copy_file_range``): the data never passes through Python. A blob the caller has just
    verified (``verified``) is not hashed again.
    """
    digest: list[str] = [verified] if verified is not None else []
    failure: list[BaseException] = []

    def hash_blob() -> None:
        try:
            with open(blob_path, "rb") as f:
                digest.append("sha256:" + hashlib.file_digest(f, "sha256").hexdigest())
        except BaseException as e:  # re-raised by the caller
            failure.append(e)

    hasher = threading.Thread(target=hash_blob, name="layer-hash", daemon=True)
    if verified is None:
        hasher.start()
    try:
        applier.source_fd = raw.fileno()
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                applier.apply(member, tar)
    finally:
        if verified is None:
            hasher.join()
    if failure:
        raise failure[0]
    return digest[0]


def _is_compressed(head: bytes) -> bool:
    return head[:2] == _GZIP_MAGIC or head[:4] == _ZSTD_MAGIC


def _decompressed(raw: _Readable, head: bytes) -> _Readable:
    # Sniff rather than trust the media type: Docker schema2 says gzip even for plain tars.
    if head[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb")
    return zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], raw), read_across_frames=True)


class _Prefixed:
    """``stream`` with ``head`` (already read from it, to sniff the format) put back in front."""

    def __init__(self, head: bytes, stream: _Readable) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if 0 <= size <= len(self._head):
            data, self._head = self._head[:size], self._head[size:]
            return data
        data, self._head = self._head, b""
        return data + self._stream.read(size - len(data) if size >= 0 else -1)


class _Applier:
    def __init__(self, root: str, mode: WhiteoutMode, layer: str) -> None:
        self.root = root
        self.mode = mode
        self.layer = layer
        self.entries = 0
        self.skipped_devices = 0
        self._is_root = os.geteuid() == 0
        self._written: set[str] = set()
        """Relative paths this layer created (an opaque directory keeps exactly these)."""
        self._touched: set[str] = set()
        """Directories that hold something this layer created."""
        self._dir_times: list[tuple[str, float]] = []
        self._real_dirs: set[str] = set()
        """Paths under root known to be real directories, so each entry's parents are checked once.
        Cleared whenever this layer removes a directory: a path checked before may be a symlink now."""
        self.source_fd: int | None = None
        """The blob's descriptor when it is a plain tar on disk: file data is copied from it."""

    def apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = self._clean(member.name, member.name)
        self.entries += 1
        if not parts:
            return  # The root entry ("./"): the snapshot's own directory is not the layer's to change.
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, parts)
            return
        parent = self._parent_dir(member.name, parts[:-1])
        path = os.path.join(parent, base)
        if self._create(member, tar, path):
            self._metadata(member, path)
        rel = "/".join(parts)
        self._written.add(rel)
        for i in range(1, len(parts)):
            self._touched.add("/".join(parts[:i]))
        if member.isdir():
            self._touched.add(rel)

    def finish(self) -> None:
        # Directory times last, deepest first: creating entries inside a directory bumps its mtime.
        for path, mtime in reversed(self._dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _clean(self, member: str, name: str) -> list[str]:
        if name.startswith("/"):
            raise UnsafeLayer(self.layer, member, "absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeLayer(self.layer, member, "path contains '..'")
        return parts

    def _parent_dir(self, member: str, parts: list[str]) -> str:
        """The real directory ``parts`` names under root, made if missing, never via a symlink."""
        current = self.root
        for i, component in enumerate(parts):
            current = os.path.join(current, component)
            if current in self._real_dirs:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                self._real_dirs.add(current)
                continue
            where = "/" + "/".join(parts[: i + 1])
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayer(self.layer, member, f"parent {where} is a symlink")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(self.layer, member, f"parent {where} is not a directory")
            self._real_dirs.add(current)
        return current

    def _whiteout(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        parent = self._parent_dir(member.name, parts[:-1])
        base = parts[-1]
        if base == OPAQUE_MARKER:
            if self.mode is WhiteoutMode.OVERLAY:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            else:
                self._clear_opaque(parent, "/".join(parts[:-1]))
            return
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", "..") or victim.startswith(WHITEOUT_PREFIX):
            raise UnsafeLayer(self.layer, member.name, "whiteout names no file")
        path = os.path.join(parent, victim)
        self._remove(path)
        if self.mode is WhiteoutMode.OVERLAY:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def _clear_opaque(self, directory: str, rel: str) -> None:
        for name in os.listdir(directory):
            child_rel = f"{rel}/{name}" if rel else name
            child = os.path.join(directory, name)
            if child_rel in self._touched and os.path.isdir(child) and not os.path.islink(child):
                self._clear_opaque(child, child_rel)
            elif child_rel not in self._written:
                self._remove(child)

    def _create(self, member: tarfile.TarInfo, tar: tarfile.TarFile, path: str) -> bool:
        """Make the entry at ``path``, replacing what is there. True when its metadata is still to be
        set by path; False for a regular file (set through its descriptor) and a device we may not make.

        Made first and replaced only when something is in the way: most entries of a layer are new,
        and looking before each one was two failed ``stat`` calls per entry.
        """
        if member.isdir():
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    self._remove(path)
                    os.mkdir(path, 0o700)
            self._real_dirs.add(path)
            return True
        if (member.ischr() or member.isblk()) and not self._is_root:
            self._remove(path)
            self.skipped_devices += 1
            return False
        try:
            self._make(member, tar, path)
        except FileExistsError:
            self._remove(path)
            self._make(member, tar, path)
        return not member.isreg()  # a regular file's metadata was set through its descriptor

    def _make(self, member: tarfile.TarInfo, tar: tarfile.TarFile, path: str) -> None:
        if member.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                if self.source_fd is not None and not member.sparse:
                    _copy_range(self.source_fd, fd, member.offset_data, member.size, member.name)
                else:
                    source = tar.extractfile(member)
                    assert source is not None
                    _write_all(fd, source)
                self._metadata(member, fd)
            finally:
                os.close(fd)
        elif member.issym():
            # The target is data interpreted inside the container; we never follow it here.
            os.symlink(member.linkname, path)
        elif member.islnk():
            link_parts = self._clean(member.name, member.linkname)
            if not link_parts:
                raise UnsafeLayer(self.layer, member.name, "hard link to the root directory")
            source_dir = self._existing_dir(member.name, link_parts[:-1])
            source_path = os.path.join(source_dir, link_parts[-1])
            if not os.path.lexists(source_path) or os.path.isdir(source_path):
                raise UnsafeLayer(
                    self.layer, member.name, f"hard link target {member.linkname!r} not in the layer"
                )
            os.link(source_path, path, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(path, member.mode & 0o7777)
        else:
            raise InvalidImage(self.layer, f"entry {member.name!r} has unsupported tar type {member.type!r}")

    def _remove(self, path: str) -> None:
        if _remove(path):
            self._real_dirs.clear()  # a directory checked before may be gone or replaced below it

    def _existing_dir(self, member: str, parts: list[str]) -> str:
        current = self.root
        for component in parts:
            current = os.path.join(current, component)
            if os.path.islink(current) or not os.path.isdir(current):
                raise UnsafeLayer(
                    self.layer, member, "hard link target goes through a symlink or a non-directory"
                )
        return current

    def _metadata(self, member: tarfile.TarInfo, where: str | int) -> None:
        """Owner, xattrs, mode and time of the entry at ``where``.

        ``where`` is the entry's path, or a regular file's open descriptor (no path walk per call).
        """
        if member.islnk():
            # The inode (and its owner, mode, times) belongs to the entry it links to; a link
            # entry's own header fields are whatever the writer left there.
            return
        follow = not isinstance(where, str)  # a descriptor is the file; a path is never followed
        if self._is_root:
            os.chown(where, member.uid, member.gid, follow_symlinks=follow)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                _set_xattr(where, key.removeprefix("SCHILY.xattr."), value, follow)
        if not member.issym():
            # After chown, which clears set-id bits.
            os.chmod(where, member.mode & 0o7777)
        if member.isdir():
            assert isinstance(where, str)
            self._dir_times.append((where, member.mtime))
        else:
            os.utime(where, (member.mtime, member.mtime), follow_symlinks=follow)


def _write_all(fd: int, source: IO[bytes]) -> None:
    # Straight to the descriptor: a file object over it would ask whether it is a terminal and
    # where it stands, two system calls per file for nothing. A short write is carried on, never
    # dropped (a full disk then raises on the next write).
    while chunk := source.read(_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _copy_range(src: int, dst: int, offset: int, size: int, name: str) -> None:
    """Copy ``size`` bytes at ``offset`` of ``src`` to ``dst`` in the kernel (sendfile as fallback)."""
    done = 0
    use_range = True
    while done < size:
        n = 0
        if use_range:
            try:
                n = os.copy_file_range(src, dst, size - done, offset + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_range = False
                continue
        else:
            n = os.sendfile(dst, src, offset + done, size - done)
        if n == 0:
            raise tarfile.ReadError(f"{name}: the layer ends inside this file's data")
        done += n


def _set_xattr(where: str | int, name: str, value: str, follow: bool = False) -> None:
    try:
        # tarfile decodes pax values with surrogateescape; undo it for binary values (capabilities).
        os.setxattr(where, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=follow)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


def _remove(path: str) -> bool:
    """Remove whatever is at ``path`` (nothing is fine); True when it was a directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
        return True
    os.unlink(path)
    return False
