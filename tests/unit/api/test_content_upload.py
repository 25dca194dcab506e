"""Uploads to the Content service over a real gRPC server on a unix socket: small files several to a
message, a daemon from before ``UploadBatched`` sent to one message a chunk, and a blob that does not
match its digest refused inside a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from buildsvc.api.content_client import CHUNK_BYTES, sync_dir
from buildsvc.api.content_server import ContentServicer
from buildsvc.api.gen import content_pb2 as pb
from buildsvc.api.gen import content_pb2_grpc as pb_grpc
from buildsvc.contexts import ContextStore, scan_dir


class _Counting(ContentServicer):
    """Counts the messages of each upload call and the data each carried."""

    def __init__(self, store: ContextStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []
        """Each message's size on the wire."""
        self.chunks: list[int] = []

    def UploadBatched(
        self, request_iterator: Iterator[pb.UploadBatch], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        def counted() -> Iterator[pb.UploadBatch]:
            for batch in request_iterator:
                self.batches.append(batch.ByteSize())
                yield batch

        return super().UploadBatched(counted(), context)

    def Upload(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        def counted() -> Iterator[pb.UploadChunk]:
            for chunk in request_iterator:
                self.chunks.append(len(chunk.data))
                yield chunk

        return super().Upload(counted(), context)


class _BeforeBatches(_Counting):
    """A daemon from before UploadBatched: the generated servicer's UNIMPLEMENTED answer."""

    UploadBatched = pb_grpc.ContentServicer.UploadBatched


def _serve(servicer: ContentServicer, sock: Path) -> tuple[grpc.Server, grpc.Channel]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ContentServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    return server, grpc.insecure_channel(f"unix:{sock}")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """300 small files, an empty one and one of 2.5 chunks."""
    ctx = tmp_path / "ctx"
    for n in range(300):
        sub = ctx / f"d{n // 100}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n:03d}.txt").write_text(f"file {n}\n")
    (ctx / "empty").write_bytes(b"")
    (ctx / "big.bin").write_bytes(bytes(range(256)) * (CHUNK_BYTES * 5 // 2 // 256))
    return ctx


def _stored(store: ContextStore, ctx: Path) -> bool:
    files = [p for p in ctx.rglob("*") if p.is_file()]
    return all(
        store.blob_path("sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()).read_bytes() == p.read_bytes()
        for p in files
    )


def _send_all(servicer: _Counting, tmp_path: Path, context: Path) -> None:
    """Send ``context`` to ``servicer`` over a unix socket: every file must arrive."""
    server, channel = _serve(servicer, tmp_path / "content.sock")
    try:
        sent = sync_dir(channel, scan_dir(context))
    finally:
        channel.close()
        server.stop(None)
    assert _stored(servicer.store, context)
    assert (sent.files, sent.files_uploaded) == (302, 302)


def test_small_files_travel_several_to_a_message(tmp_path: Path, context: Path) -> None:
    servicer = _Counting(ContextStore(tmp_path / "store"))
    _send_all(servicer, tmp_path, context)
    assert servicer.chunks == []  # all through UploadBatched
    # 301 small files fill part of a message; the big file's 2.5 chunks need three more at most.
    assert 3 <= len(servicer.batches) <= 5
    assert max(servicer.batches) <= CHUNK_BYTES + 1024  # a full chunk and its headers; gRPC's limit is 4 MiB


def test_a_daemon_from_before_batches_gets_a_message_a_chunk(tmp_path: Path, context: Path) -> None:
    servicer = _BeforeBatches(ContextStore(tmp_path / "store"))
    _send_all(servicer, tmp_path, context)
    assert len(servicer.chunks) == 301 + 3  # a message per small file, three for the big one
    assert max(servicer.chunks) == CHUNK_BYTES


def test_a_blob_that_does_not_match_is_refused_inside_a_batch(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "store")
    server, channel = _serve(ContentServicer(store), tmp_path / "content.sock")
    good, claimed = b"kept\n", b"the real bytes\n"
    digest = "sha256:" + hashlib.sha256(claimed).hexdigest()
    batch = pb.UploadBatch(
        chunks=[
            pb.UploadChunk(digest="sha256:" + hashlib.sha256(good).hexdigest(), path="a.txt", data=good),
            pb.UploadChunk(digest=digest, path="src/app.py", data=b"tampered\n"),
        ]
    )
    try:
        stub = pb_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]  # generated
        with pytest.raises(grpc.RpcError) as info:
            stub.UploadBatched(iter([batch]))
    finally:
        channel.close()
        server.stop(None)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "src/app.py" in (info.value.details() or "")
    assert not store.has_blob(digest)
    assert store.has_blob("sha256:" + hashlib.sha256(good).hexdigest())  # verified before it: kept
    assert list(store.tmp.iterdir()) == []
