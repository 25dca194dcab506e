"""Outputs a client writes on its own machine from what the daemon staged (``-o`` against a daemon).

As buildctl receives a BuildKit output over the session, ``buildsvc build -o type=local,dest=DIR``
(and ``tar``, ``oci``; ``dest=-`` is stdout for those two) against a daemon asks for it with
``client-dest`` (see :mod:`buildsvc.daemon.outputs`); ``daemon-host=true`` keeps the old meaning,
a path on the daemon host. After the Solve, :func:`fetch_outputs` downloads each staged output
(``Content.Download``) into a temporary file, checks its digest and size, and only then writes it:
a tar or OCI tarball replaces DEST atomically, a local tree is unpacked by
:func:`buildsvc.api.unpack.unpack_tar`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from buildsvc.api.client import Client
from buildsvc.api.errors import error_from_rpc
from buildsvc.api.gen import content_pb2 as pb
from buildsvc.api.gen import content_pb2_grpc as pb_grpc
from buildsvc.api.unpack import unpack_tar
from buildsvc.daemon.exporter_specs import is_true
from buildsvc.daemon.outputs import CLIENT_DEST, CLIENT_OUTPUT, STAGED_TYPES, is_client_output
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev

__all__ = [
    "DAEMON_HOST",
    "Fetched",
    "fetch_output",
    "fetch_outputs",
    "for_daemon",
    "recorded_exporters",
    "writes_stdout",
]

DAEMON_HOST = "daemon-host"
"""``-o`` attr: ``dest`` is a path on the daemon host, written by the daemon (the old behaviour)."""
STDOUT = "-"


def for_daemon(outputs: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The ``-o`` specs as sent to a daemon: ``dest`` becomes ``client-dest`` (absolute, or ``-``)
    unless ``daemon-host=true``; InvalidInput for what cannot work.
    """
    sent: list[dict[str, str]] = []
    for out in outputs:
        attrs = dict(out)
        kind = attrs.get("type", "")
        daemon_host = is_true(attrs.pop(DAEMON_HOST, ""))
        dest = attrs.get("dest", "")
        if kind not in STAGED_TYPES or not dest:
            if daemon_host:
                raise InvalidInput(f"--output type={kind}: daemon-host= goes with a local, tar or oci dest=")
            sent.append(attrs)
            continue
        if dest == STDOUT and (daemon_host or kind == "local"):
            raise InvalidInput(f"--output type={kind}: dest=- (stdout) is for tar and oci on the client")
        if daemon_host:
            attrs["dest"] = os.path.abspath(dest)  # the daemon's working directory is not ours
        else:
            del attrs["dest"]
            attrs[CLIENT_DEST] = dest if dest == STDOUT else os.path.abspath(dest)
        sent.append(attrs)
    if sum(writes_stdout(a) for a in sent) > 1:
        raise InvalidInput("--output: only one output can go to stdout (dest=-)")
    return sent


def recorded_exporters(client: Client, build_ref: str) -> list[dict[str, str]]:
    """The exporters a build was asked for, as its ``SolveRequested`` recorded them (numbered)."""
    stream = client.status(build_ref)
    try:
        for update in stream:
            if update.type == ev.SolveRequested.type_name:
                found = update.payload.get("exporters") or []
                return [{str(k): str(v) for k, v in e.items()} for e in found if isinstance(e, dict)]
    finally:
        stream.cancel()
    return []


def writes_stdout(attrs: Mapping[str, str]) -> bool:
    """Whether this (sent) output is written to the client's stdout."""
    return attrs.get(CLIENT_DEST) == STDOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """An output written by the client."""

    exporter: str
    dest: str
    digest: str
    size: int


def fetch_outputs(
    channel: grpc.Channel,
    build_ref: str,
    exporters: Sequence[Mapping[str, str]],
    *,
    addr: str = "",
    stdout: IO[bytes] | None = None,
    skipped: list[str] | None = None,
) -> list[Fetched]:
    """Download and write every client output among the Solve's ``exporters`` (in their order).

    With ``skipped``, an output the daemon no longer holds is noted there instead of raising.
    """
    fetched = []
    for n, spec in enumerate(exporters):
        if is_client_output(spec):
            index = int(spec.get(CLIENT_OUTPUT, n))
            if skipped is not None:
                try:
                    fetched.append(
                        fetch_output(channel, build_ref, index, spec[CLIENT_DEST], addr=addr, stdout=stdout)
                    )
                except NotFound as e:
                    skipped.append(str(e))
                continue
            fetched.append(
                fetch_output(channel, build_ref, index, spec[CLIENT_DEST], addr=addr, stdout=stdout)
            )
    return fetched


def fetch_output(
    channel: grpc.Channel,
    build_ref: str,
    index: int,
    dest: str,
    *,
    addr: str = "",
    stdout: IO[bytes] | None = None,
) -> Fetched:
    """Download output ``index`` of ``build_ref`` and write it to ``dest`` (``-``: stdout)."""
    stub = pb_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]  # generated
    target = Path(dest) if dest != STDOUT else None
    # A file output is spooled beside its destination, so the verified file just takes its place.
    spool_dir = target.parent if target is not None else None
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    with _spool(spool_dir) as (spool, path):
        header = _download(stub, build_ref, index, spool, addr)
        spool.flush()
        if header.exporter == "local":
            if target is None:
                raise InvalidInput(
                    f"output {index} of build {build_ref} is a directory: it cannot go to stdout"
                )
            unpack_tar(path, target)
        elif target is None:
            spool.seek(0)
            out = stdout if stdout is not None else sys.stdout.buffer
            shutil.copyfileobj(spool, out)
            out.flush()
        else:
            os.replace(path, target)
    return Fetched(exporter=header.exporter, dest=dest, digest=header.digest, size=header.size)


@contextmanager
def _spool(directory: Path | None) -> Iterator[tuple[IO[bytes], Path]]:
    fd, name = tempfile.mkstemp(prefix=".buildsvc-output-", dir=directory)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f, Path(name)
    finally:
        Path(name).unlink(missing_ok=True)  # gone already when it became the destination


def _download(stub: Any, build_ref: str, index: int, spool: IO[bytes], addr: str) -> pb.DownloadChunk:
    """Write the output's bytes into ``spool``; its header chunk, once digest and size are checked."""
    header: pb.DownloadChunk | None = None
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in stub.Download(pb.DownloadRequest(build_ref=build_ref, index=index)):
            if header is None:
                header = chunk
                continue
            digest.update(chunk.data)
            size += len(chunk.data)
            spool.write(chunk.data)
    except grpc.RpcError as e:
        raise error_from_rpc(e, addr=addr) from None
    if header is None:
        raise InvalidInput(f"the daemon sent nothing for output {index} of build {build_ref}")
    got = f"sha256:{digest.hexdigest()}"
    if (got, size) != (header.digest, header.size):
        raise InvalidInput(
            f"output {index} of build {build_ref} arrived damaged: {size} bytes, {got}; "
            f"the daemon staged {header.size} bytes, {header.digest}"
        )
    return header
