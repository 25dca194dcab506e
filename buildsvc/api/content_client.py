"""Sending a scanned directory to a daemon's context store (the client half of ``content.proto``).

:func:`sync_dir` sends the manifest, learns which file contents the daemon lacks, and uploads only
those, each as chunks read with ``O_NOFOLLOW`` from a file that had them when it was scanned. A file
edited between the scan and the upload is refused by the daemon, naming it (its bytes no longer
match the digest the manifest promised).

The chunks go several to a message (``UploadBatched``), about :data:`CHUNK_BYTES` a message: each
message is a trip through gRPC's stream on both sides and through the daemon's socket relay, so a
message per file made the first send of 10,000 small files take seconds. A daemon from before
``UploadBatched`` gets them with ``Upload``, a message each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc

from buildsvc.api.errors import error_from_rpc
from buildsvc.api.gen import content_pb2 as pb
from buildsvc.api.gen import content_pb2_grpc as pb_grpc
from buildsvc.contexts import ContextTransfer, Scan
from buildsvc.errors import BuildsvcError, InvalidInput

__all__ = ["CHUNK_BYTES", "sync_dir"]

CHUNK_BYTES = 1 << 20
"""Bytes per message: well under gRPC's default 4 MiB limit."""
_CHUNK_FRAMING = 5
"""What a chunk adds to a batch beyond its own size: the field's tag and the chunk's length (under 4 MiB)."""


def _manifest_chunks(data: bytes) -> Iterator[pb.ManifestChunk]:
    for start in range(0, max(len(data), 1), CHUNK_BYTES):
        yield pb.ManifestChunk(data=data[start : start + CHUNK_BYTES])


class _Uploads:
    """The chunks of the blobs to send; an error reading a file is kept to raise after the call
    (gRPC turns an exception inside a request iterator into a bare CANCELLED).
    """

    def __init__(self, scan: Scan, digests: list[str]) -> None:
        self.scan = scan
        self.digests = digests
        self.error: BuildsvcError | None = None

    def __iter__(self) -> Iterator[pb.UploadChunk]:
        names = self.scan.manifest.blobs()
        for digest in self.digests:
            source = self.scan.sources[digest]
            name = names[digest].path
            try:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                self.error = InvalidInput(f"cannot read {source}: {e.strerror}")
                return
            try:  # read from the descriptor: a file object costs three more system calls a file
                first = True
                while True:
                    data = os.read(fd, CHUNK_BYTES)
                    if data or first:  # an empty file is one empty chunk
                        yield pb.UploadChunk(digest=digest, path=name if first else "", data=data)
                    if not data:
                        break
                    first = False
            finally:
                os.close(fd)

    def batches(self) -> Iterator[pb.UploadBatch]:
        """The same chunks, consecutive ones together, in messages of about :data:`CHUNK_BYTES`."""
        batch: list[pb.UploadChunk] = []
        size = 0
        for chunk in self:
            weight = chunk.ByteSize() + _CHUNK_FRAMING
            if batch and size + weight > CHUNK_BYTES:
                yield pb.UploadBatch(chunks=batch)
                batch, size = [], 0
            batch.append(chunk)
            size += weight
        if batch:
            yield pb.UploadBatch(chunks=batch)


def _upload(stub: pb_grpc.ContentStub, scan: Scan, digests: list[str], addr: str) -> None:
    for batched in (True, False):
        uploads = _Uploads(scan, digests)
        try:
            if batched:
                stub.UploadBatched(uploads.batches())
            else:
                stub.Upload(iter(uploads))
        except grpc.RpcError as e:
            if uploads.error is not None:
                raise uploads.error from None
            if batched and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue  # a daemon from before UploadBatched: nothing was stored, send it all again
            raise error_from_rpc(e, addr=addr) from None
        if uploads.error is not None:
            raise uploads.error
        return


def sync_dir(channel: grpc.Channel, scan: Scan, *, addr: str = "") -> ContextTransfer:
    """Make the daemon hold ``scan``'s manifest and every file of it; returns what was sent."""
    stub = pb_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]  # generated
    manifest = scan.manifest
    try:
        answer: pb.MissingResponse = stub.Missing(_manifest_chunks(manifest.canonical()))
    except grpc.RpcError as e:
        raise error_from_rpc(e, addr=addr) from None
    if answer.manifest_digest != manifest.digest:
        raise InvalidInput(
            f"the daemon read the manifest of {scan.root} as {answer.manifest_digest}, not {manifest.digest}"
        )
    missing = list(answer.missing)
    unknown = [d for d in missing if d not in scan.sources]
    if unknown:
        raise InvalidInput(f"the daemon asked for {unknown[0]}, which is not a file of {scan.root}")
    if missing:
        _upload(stub, scan, missing, addr)
    return ContextTransfer.of(manifest, set(missing))
