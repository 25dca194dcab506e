"""The Content servicer: local dirs sent to the daemon's context store (``content.proto``).

Missing stores a client's manifest and answers the file contents the store lacks; Upload receives
them, each verified against its digest before it is stored. Download sends an output staged for
its client (see :mod:`buildsvc.daemon.outputs`). What a Solve then names by manifest
digest is made into a tree by :func:`buildsvc.contexts.receive_contexts` (see ``server.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from buildsvc.api.errors import abort_with
from buildsvc.api.gen import content_pb2 as pb
from buildsvc.api.gen import content_pb2_grpc as pb_grpc
from buildsvc.api.peercred import actor_of
from buildsvc.contexts import ContextStore
from buildsvc.contexts.store import BlobBatch, BlobWriter
from buildsvc.daemon.outputs import OutputStaging
from buildsvc.errors import InvalidInput, NotFound

__all__ = ["MAX_MANIFEST_BYTES", "ContentServicer", "add_content_service"]

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""A manifest larger than this (a few million entries) is refused rather than held in memory."""


class ContentServicer(pb_grpc.ContentServicer):
    """The daemon's Content service over its context store (and its outputs staged for clients)."""

    def __init__(
        self,
        store: ContextStore,
        outputs: OutputStaging | None = None,
        peer_nonce: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.outputs = outputs
        self.peer_nonce = peer_nonce
        """The unix socket relay's nonce once serving (who fetched an output is recorded)."""

    def Missing(
        self, request_iterator: Iterator[pb.ManifestChunk], context: grpc.ServicerContext
    ) -> pb.MissingResponse:
        """Store the manifest; answer the digests of the file contents still to upload."""
        try:
            data = bytearray()
            for chunk in request_iterator:
                data += chunk.data
                if len(data) > MAX_MANIFEST_BYTES:
                    raise InvalidInput(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            manifest, missing = self.store.receive_manifest(bytes(data))
        except BaseException as e:
            abort_with(context, e)
        return pb.MissingResponse(manifest_digest=manifest.digest, missing=missing)

    def Upload(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        """Store each blob once all its chunks arrived and its bytes match its digest."""
        return self._store_chunks(request_iterator, context)

    def UploadBatched(
        self, request_iterator: Iterator[pb.UploadBatch], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        """Upload's chunks, several to a message."""
        return self._store_chunks((c for batch in request_iterator for c in batch.chunks), context)

    def _store_chunks(
        self, chunks: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        writer: BlobWriter | None = None
        batch = BlobBatch(self.store)  # stored durably together, not an fsync each
        blobs = size = 0
        try:
            for chunk in chunks:
                if writer is None or chunk.digest != writer.digest:
                    if writer is not None:
                        batch.add(writer)
                        blobs, size = blobs + 1, size + writer.size
                    writer = self.store.open_blob(chunk.digest, chunk.path or chunk.digest)
                writer.write(chunk.data)
            if writer is not None:
                batch.add(writer)
                blobs, size = blobs + 1, size + writer.size
                writer = None
            batch.flush()
        except BaseException as e:
            if writer is not None:
                writer.abort()  # a blob cut short is dropped; those verified before it stay
            try:
                batch.flush()
            finally:
                abort_with(context, e)
        return pb.UploadResponse(blobs=blobs, bytes=size)

    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadChunk]:
        """Stream a staged output once; removed (and recorded) when the client has every byte."""
        try:
            if self.outputs is None:
                raise NotFound("this server stages no outputs")
            with self.outputs.downloading(request.build_ref, request.index) as staged:
                yield pb.DownloadChunk(exporter=staged.exporter, digest=staged.digest, size=staged.size)
                for data in staged.chunks():
                    if not context.is_active():
                        return  # the client went away: the output stays for a retry or a prune
                    yield pb.DownloadChunk(data=data)
                self.outputs.delivered(staged, actor=actor_of(context, self.peer_nonce()))
        except Exception as e:  # not GeneratorExit: a client that left mid-stream just leaves
            abort_with(context, e)


def add_content_service(
    server: grpc.Server,
    store: ContextStore,
    outputs: OutputStaging | None = None,
    peer_nonce: Callable[[], str | None] = lambda: None,
) -> None:
    """Serve the Content service on ``server``."""
    servicer = ContentServicer(store, outputs, peer_nonce)
    pb_grpc.add_ContentServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated
