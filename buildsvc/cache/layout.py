"""An OCI image layout directory used as a cache store (``type=local``).

``oci-layout``, ``blobs/sha256/<hex>`` and ``index.json``, whose entries name the cache's root
manifest by the tag annotation ``org.opencontainers.image.ref.name``. Blobs are written to a temporary
name and renamed (a reader never sees half a blob); ``index.json`` is read, changed and replaced
under an exclusive ``flock`` on ``.buildsvc-lock``, by rename, so concurrent exports to one directory
(threads or processes) each add their tag and none is lost or torn.

What is fsynced: a digest-named small blob (config, root document) before it is renamed into place,
and ``index.json`` when it tags something, so an index on disk names only blobs whose bytes were
durable first. The ``oci-layout`` marker and the empty ``index.json`` a new layout starts with are
not (an fsync each, ~2 ms, was a visible part of a cold export into a new directory): a crash can
leave them empty, and an empty ``index.json`` reads as an index with no entries; a new
``LayoutStore(create=True)`` writes a marker again when its content is not the layout version.
A small blob found in place whose bytes do not hash to its name (torn by a crash) is written again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from buildsvc.cache.config import CacheConfigError

__all__ = ["REF_NAME_ANNOTATION", "LayoutStore", "stat_identity"]

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_LAYOUT = '{"imageLayoutVersion":"1.0.0"}'
_CHUNK = 1 << 20


class LayoutStore:
    """One layout directory."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path).absolute()
        marker = self.path / "oci-layout"
        if create:
            (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not _has_content(marker, _LAYOUT.encode()):
                _write_atomic(marker, _LAYOUT.encode(), durable=False)
            with self._locked():
                if not (self.path / "index.json").exists():
                    self._write_index(
                        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}, durable=False
                    )
        elif not marker.is_file():
            raise CacheConfigError(str(self.path), "is not an OCI layout (no oci-layout file)")

    # --- blobs ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` lives (whether or not it is there)."""
        algorithm, _, hexpart = digest.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise CacheConfigError(str(self.path), f"not a sha256 digest: {digest!r}")
        return self.path / "blobs" / "sha256" / hexpart

    def has(self, digest: str) -> bool:
        """Whether the blob is present."""
        return self.blob_path(digest).is_file()

    def put_file(self, digest: str, source: Path, *, link: bool = False) -> int:
        """Put the file ``source`` in as blob ``digest`` (unless present); bytes written.

        With ``link``, a hard link when ``source`` is on the same filesystem (no bytes move; the
        caller must notice if the shared file is later changed in place), else a copy.
        """
        target = self.blob_path(digest)
        if target.is_file():
            return 0
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            if not (link and _linked(source, tmp)):
                shutil.copyfile(source, tmp)  # copy_file_range/sendfile: no trip through Python
            os.chmod(tmp, 0o644)  # a shared cache dir is read by others
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` under its digest; returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.blob_path(digest)
        if not _has_content(target, data):  # absent, or torn by a crash: (re)write it
            _write_atomic(target, data)
        return digest

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), verified against its digest."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CacheConfigError(str(self.path), f"blob {digest} is missing") from None
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise CacheConfigError(
                str(self.path), f"blob {digest} is corrupt (its content hashes to {actual})"
            )
        return data

    def verify_blob(self, digest: str, size: int) -> int:
        """Check that blob ``digest`` is there, ``size`` bytes long (0: any) and hashes to its name."""
        return self.verified_identity(digest, size)[2]

    def verified_identity(self, digest: str, size: int) -> tuple[int, ...]:
        """:meth:`verify_blob`, and the file's (device, inode, size, mtime, ctime) while it was read.

        ``CacheConfigError`` also when the file changed while it was hashed.
        """
        path = self.blob_path(digest)
        sha = hashlib.sha256()
        read = 0
        buffer = memoryview(bytearray(_CHUNK))  # one buffer, not a new 1 MiB bytes per read
        try:
            with path.open("rb", buffering=0) as src:
                before = stat_identity(os.fstat(src.fileno()))
                while n := src.readinto(buffer):
                    sha.update(buffer[:n])
                    read += n
                after = stat_identity(os.fstat(src.fileno()))
        except FileNotFoundError:
            raise CacheConfigError(str(self.path), f"layer blob {digest} is missing") from None
        actual = "sha256:" + sha.hexdigest()
        if actual != digest or (size and read != size) or before != after:
            raise CacheConfigError(
                str(self.path), f"layer blob {digest} is corrupt ({read} bytes hashing to {actual})"
            )
        return before

    # --- index.json -------------------------------------------------------------------------------

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        """Name ``descriptor`` (a stored manifest or index) ``tag`` in ``index.json``."""
        entry = dict(descriptor)
        entry["annotations"] = {**entry.get("annotations", {}), REF_NAME_ANNOTATION: tag}
        with self._locked():
            index = self._read_index()
            kept = [
                d
                for d in index.get("manifests", [])
                if (d.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag
            ]
            index["manifests"] = [*kept, entry]
            self._write_index(index)

    def resolve(self, *, tag: str = "", digest: str = "") -> dict[str, Any]:
        """The ``index.json`` entry for ``digest`` or ``tag`` (``CacheConfigError`` when none)."""
        manifests = self._read_index().get("manifests", [])
        for d in manifests:
            if not isinstance(d, dict):
                continue
            if digest and d.get("digest") == digest:
                return d
            if not digest and (d.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag:
                return d
        if digest:
            # Not listed but stored: a digest names content, so the blob itself will do.
            if self.has(digest):
                return {"digest": digest, "mediaType": "", "size": self.blob_path(digest).stat().st_size}
            raise CacheConfigError(str(self.path), f"no cache manifest {digest}")
        raise CacheConfigError(str(self.path), f"no cache tagged {tag!r} in index.json")

    def _read_index(self) -> dict[str, Any]:
        try:
            raw = (self.path / "index.json").read_bytes()
            # Empty: the unsynced index a new layout starts with, cut short by a crash (no entries).
            doc = json.loads(raw) if raw else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except ValueError as e:
            raise CacheConfigError(str(self.path), f"index.json is not JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise CacheConfigError(str(self.path), "index.json is not an image index")
        return doc

    def _write_index(self, index: dict[str, Any], *, durable: bool = True) -> None:
        _write_atomic(
            self.path / "index.json",
            json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
            durable=durable,
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".buildsvc-lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def stat_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written to: device, inode, size, mtime and ctime.

    ctime cannot be set back by a user, so a blob edited in place and its mtime restored still differs.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _linked(source: Path, dest: Path) -> bool:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem (EXDEV), or links not allowed there
        return False
    return True


def _has_content(path: Path, data: bytes) -> bool:
    """Whether the (small) file at ``path`` holds exactly ``data``."""
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except (FileNotFoundError, NotADirectoryError):
        return False


def _write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a temporary name, then rename it to ``path`` (fsynced first if ``durable``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
