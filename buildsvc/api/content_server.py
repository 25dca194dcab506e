"""The Content servicer: local dirs sent to the daemon's context store (``content.proto``).

Missing stores a client's manifest and answers the file contents the store lacks; Upload receives
them, each verified against its digest before it is stored. What a Solve then names by manifest
digest is made into a tree by :func:`buildsvc.contexts.receive_contexts` (see ``server.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from buildsvc.api.errors import abort_with
from buildsvc.api.gen import content_pb2 as pb
from buildsvc.api.gen import content_pb2_grpc as pb_grpc
from buildsvc.contexts import ContextStore
from buildsvc.contexts.store import BlobWriter
from buildsvc.errors import InvalidInput

__all__ = ["MAX_MANIFEST_BYTES", "ContentServicer", "add_content_service"]

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""A manifest larger than this (a few million entries) is refused rather than held in memory."""


class ContentServicer(pb_grpc.ContentServicer):
    """The daemon's Content service over its context store."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store

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
        writer: BlobWriter | None = None
        blobs = size = 0
        try:
            for chunk in request_iterator:
                if writer is None or chunk.digest != writer.digest:
                    if writer is not None:
                        writer.commit()
                        blobs, size = blobs + 1, size + writer.size
                    writer = self.store.open_blob(chunk.digest, chunk.path or chunk.digest)
                writer.write(chunk.data)
            if writer is not None:
                writer.commit()
                blobs, size = blobs + 1, size + writer.size
        except BaseException as e:
            if writer is not None:
                writer.abort()  # a blob cut short is dropped; those verified before it stay
            abort_with(context, e)
        return pb.UploadResponse(blobs=blobs, bytes=size)


def add_content_service(server: grpc.Server, store: ContextStore) -> None:
    """Serve the Content service on ``server``."""
    pb_grpc.add_ContentServicer_to_server(ContentServicer(store), server)  # type: ignore[no-untyped-call]  # generated
