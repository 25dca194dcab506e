"""Shared by the image exporter and the registry cache: a registry client for one push or pull.

``registry.insecure=true`` on an export allows plain HTTP to a loopback registry for that operation
only: the engine's own client keeps its options, and a one-off client with ``insecure`` is made
(and closed) around the operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from buildsvc.sources import RegistryClient

__all__ = ["client_for", "file_chunks"]

_CHUNK = 1 << 20


@contextmanager
def client_for(base: RegistryClient, *, insecure: bool) -> Iterator[RegistryClient]:
    """``base``, or a client like it that also allows plain HTTP when ``insecure`` asks for it."""
    if not insecure or base.options.insecure:
        yield base
        return
    client = RegistryClient(replace(base.options, insecure=True))
    try:
        yield client
    finally:
        client.close()


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file in 1 MiB chunks, for streamed uploads (called again on a retry)."""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
