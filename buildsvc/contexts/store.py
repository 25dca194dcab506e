"""The daemon's context store: content-addressed blobs, manifests, and directories made from them.

Layout under ``ROOT/contexts/``::

    blobs/sha256/<hex>                 a file's bytes, stored once whatever its name or mode (read-only)
    manifests/sha256/<hex>.json        a manifest's canonical bytes (named by their sha256)
    manifests/sha256/<hex>.missing     the blobs the daemon lacked when the manifest was received
    trees/<hex>/                       the directory a manifest describes, made for the solver
    tmp/                               partial writes, renamed into place when complete

Every write goes to ``tmp/`` first and is renamed into place, so a blob or a tree that exists is
whole; a blob is renamed only after its bytes hashed to its name. Trees are made once per manifest
and reused (a rebuild of the same context makes nothing): files are copied from the blobs, not
hard-linked, so the modes and owners a tree needs never change a blob that other trees share.
Nothing here is removed yet; pruning the store is left for later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildsvc.contexts.manifest import Manifest, check_digest, parse_manifest
from buildsvc.contexts.scan import Scan
from buildsvc.errors import Conflict, InvalidInput, NotFound

__all__ = ["BlobWriter", "ContextStore", "ContextTransfer", "MissingBlobs"]

_CHUNK = 1 << 20


class MissingBlobs(Conflict):
    """A manifest names file contents the store does not have (the client must upload them first)."""

    def __init__(self, manifest_digest: str, missing: list[str], example: str) -> None:
        super().__init__(
            f"context {manifest_digest}: {len(missing)} file(s) were not uploaded (for example {example!r})"
        )
        self.manifest_digest = manifest_digest
        self.missing = missing


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextTransfer:
    """What one sent directory amounted to, and how much of it had to travel."""

    manifest_digest: str
    files: int
    bytes_total: int
    files_uploaded: int = 0
    """Distinct file contents that were sent (two files with the same bytes travel once)."""
    bytes_uploaded: int = 0
    files_reused: int = 0
    """Files whose bytes the store already had."""

    @classmethod
    def of(cls, manifest: Manifest, uploaded: set[str]) -> ContextTransfer:
        """The figures for ``manifest`` when the blobs ``uploaded`` had to be sent."""
        blobs = manifest.blobs()
        return cls(
            manifest_digest=manifest.digest,
            files=len(manifest.files),
            bytes_total=manifest.total_bytes,
            files_uploaded=sum(1 for d in blobs if d in uploaded),
            bytes_uploaded=sum(e.size for d, e in blobs.items() if d in uploaded),
            files_reused=sum(1 for e in manifest.files if e.digest not in uploaded),
        )


class BlobWriter:
    """One blob being received: bytes are hashed as they arrive and stored only if they match."""

    def __init__(self, store: ContextStore, digest: str, name: str) -> None:
        self.store = store
        self.digest = check_digest(digest, f"upload of {name!r}")
        self.name = name
        self.size = 0
        self._hash = hashlib.sha256()
        self._tmp = store.tmp_path("blob")
        self._file: BinaryIO = self._tmp.open("xb")

    def write(self, data: bytes) -> None:
        """Take the next bytes."""
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)

    def commit(self) -> None:
        """Verify the bytes and store them (``InvalidInput`` naming the file when they do not match)."""
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.abort()
            raise InvalidInput(f"upload of {self.name!r}: its bytes have digest {actual}, not {self.digest}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o444)
        os.replace(self._tmp, self.store.blob_path(self.digest))

    def abort(self) -> None:
        """Drop what was received."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class ContextStore:
    """Blobs, manifests and trees under ``root`` (``ROOT/contexts``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.manifests = root / "manifests" / "sha256"
        self.trees = root / "trees"
        self.tmp = root / "tmp"
        for d in (self.blobs, self.manifests, self.trees, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    @classmethod
    def under(cls, daemon_root: Path) -> ContextStore:
        """The context store of a daemon (or embedded engine) root: ``ROOT/contexts``."""
        return cls(daemon_root / "contexts")

    # --- blobs -------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` is (or would be) stored."""
        return self.blobs / check_digest(digest, "blob").removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.blob_path(digest).is_file()

    def tmp_path(self, kind: str) -> Path:
        """A fresh name under ``tmp/``."""
        return self.tmp / f"{kind}-{uuid.uuid4().hex}"

    def open_blob(self, digest: str, name: str) -> BlobWriter:
        """Receive the blob ``digest`` (``name``: the file it came from, for errors)."""
        return BlobWriter(self, digest, name)

    def missing(self, manifest: Manifest) -> list[str]:
        """The distinct file digests of ``manifest`` that are not stored, sorted."""
        return sorted(d for d in manifest.blobs() if not self.has_blob(d))

    # --- manifests ---------------------------------------------------------------------------------

    def _manifest_path(self, digest: str, suffix: str = ".json") -> Path:
        return self.manifests / (check_digest(digest, "manifest").removeprefix("sha256:") + suffix)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        tmp = self.tmp_path("meta")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put_manifest(self, manifest: Manifest) -> str:
        """Store ``manifest``; returns its digest."""
        digest = manifest.digest
        path = self._manifest_path(digest)
        if not path.exists():
            self._write_atomically(path, manifest.canonical())
        return digest

    def receive_manifest(self, data: bytes) -> tuple[Manifest, list[str]]:
        """A manifest a client sent: checked, stored, and the blobs it still has to upload (noted, so
        the solve that uses it can say what travelled).
        """
        manifest = parse_manifest(data)
        self.put_manifest(manifest)
        missing = self.missing(manifest)
        self._write_atomically(self._manifest_path(manifest.digest, ".missing"), json.dumps(missing).encode())
        return manifest, missing

    def load_manifest(self, digest: str) -> Manifest:
        """The stored manifest ``digest`` (``NotFound`` when it was never received)."""
        try:
            data = self._manifest_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"context {digest} was never sent to this daemon") from None
        manifest = parse_manifest(data)
        if manifest.digest != digest:
            raise InvalidInput(f"stored manifest {digest} does not hash to its name (got {manifest.digest})")
        return manifest

    def transfer(self, manifest: Manifest) -> ContextTransfer:
        """What travelled for ``manifest``: the blobs noted missing when it was received, if any."""
        try:
            noted = json.loads(self._manifest_path(manifest.digest, ".missing").read_bytes())
        except FileNotFoundError:
            noted = []
        return ContextTransfer.of(manifest, set(noted))

    # --- local ingest (embedded mode, daemon-host paths) ------------------------------------------

    def ingest(self, scan: Scan) -> ContextTransfer:
        """Copy the blobs of a scan made on this host into the store; returns what was copied."""
        copied: set[str] = set()
        for digest in self.missing(scan.manifest):
            source = scan.sources[digest]
            writer = self.open_blob(digest, str(source))
            try:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        writer.write(chunk)
            except OSError as e:
                writer.abort()
                raise InvalidInput(f"cannot read {source}: {e.strerror}") from None
            try:
                writer.commit()
            except InvalidInput:
                raise InvalidInput(f"{source} changed while it was being read; build again") from None
            copied.add(digest)
        self.put_manifest(scan.manifest)
        return ContextTransfer.of(scan.manifest, copied)

    # --- trees -------------------------------------------------------------------------------------

    def materialize(self, manifest: Manifest) -> Path:
        """The directory ``manifest`` describes, made from the blobs (once; later calls reuse it)."""
        final = self.trees / manifest.digest.removeprefix("sha256:")
        if final.is_dir():
            return final
        missing = self.missing(manifest)
        if missing:
            example = manifest.blobs()[missing[0]].path
            raise MissingBlobs(manifest.digest, missing, example)
        tmp = self.tmp_path("tree")
        tmp.mkdir(mode=0o700)
        try:
            self._fill(tmp, manifest)
            tmp.chmod(0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp)  # another solve made the same tree meanwhile
        except BaseException:
            _force_rmtree(tmp)
            raise
        return final

    def _fill(self, top: Path, manifest: Manifest) -> None:
        # The manifest was checked: paths are relative, clean, and every parent is a directory made
        # here before its children (never a symlink), so nothing written can land outside ``top``.
        as_root = os.geteuid() == 0
        dirs = []
        for e in manifest.entries:
            path = top / e.path
            if e.type == "dir":
                path.mkdir(mode=0o700)  # writable while we fill it; its own mode is set last
                dirs.append(e)
                continue
            if e.type == "symlink":
                os.symlink(e.target, path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with self.blob_path(e.digest).open("rb") as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            if as_root:
                os.chown(path, e.uid, e.gid, follow_symlinks=False)  # before chmod: it clears setuid
            if e.type == "file":
                os.chmod(path, e.mode)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        # Innermost first: filling a directory changes its mtime, and a read-only one takes no children.
        for e in reversed(dirs):
            path = top / e.path
            if as_root:
                os.chown(path, e.uid, e.gid)
            os.chmod(path, e.mode)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns))


def _force_rmtree(path: Path) -> None:
    # A half-made tree may hold directories already made read-only: open them up, then remove.
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)
