"""``type=registry``: a repository as a cache export target and import source.

The blobs, the config and the root document go through the engine's registry client (the same one
pulls images), the root tagged with the reference's tag. Reading back fetches the root by tag (or
digest), then each layer blob into the engine's content store, verified against its digest. A ref
naming an image (not a cache root) is read for the inline cache its config carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from buildsvc.cache.config import parse_config
from buildsvc.cache.imports import ImportLayer, ImportRecord, import_records
from buildsvc.cache.inline import image_manifest_parts, parse_inline
from buildsvc.cache.layers import LayerBlob
from buildsvc.cache.local import BlobAccess
from buildsvc.cache.manifest import parse_root
from buildsvc.daemon.registry_push import file_chunks
from buildsvc.errors import InvalidInput
from buildsvc.sources import ContentStore, Descriptor, RegistryClient, parse_reference
from buildsvc.sources.errors import DigestMismatch
from buildsvc.sources.manifests import sha256_digest
from buildsvc.sources.reference import Reference
from buildsvc.sources.unpack import WhiteoutMode, apply_layer_stream

__all__ = ["RegistrySource", "RegistryTarget", "cache_reference"]


def cache_reference(text: str) -> Reference:
    """The repository and tag a cache ref names (``InvalidInput`` for a digest-only ref)."""
    ref = parse_reference(text)
    if ref.tag is None:
        raise InvalidInput(f"cache ref {text!r} needs a tag")
    return Reference(domain=ref.domain, path=ref.path, tag=ref.tag)


class RegistryTarget:
    """Pushes an export to ``ref`` (its tag names the root)."""

    def __init__(self, client: RegistryClient, ref: str) -> None:
        self.client = client
        self.ref = cache_reference(ref)

    def has_blob(self, digest: str) -> bool:
        """Whether the repository has the blob."""
        return self.client.blob_exists(self.ref, digest)

    def put_blob(self, blob: LayerBlob) -> int:
        """Upload a layer blob."""
        self.client.push_blob(self.ref, blob.digest, lambda: file_chunks(blob.path), blob.size)
        return blob.size

    def put_bytes(self, data: bytes, media_type: str) -> int:
        """Upload the config."""
        self.client.push_blob_bytes(self.ref, data)
        return len(data)

    def put_root(self, data: bytes, media_type: str) -> str:
        """Upload the root document under the tag."""
        return self.client.push_manifest(self.ref, data, media_type, tag=self.ref.tag)


class RegistrySource:
    """Reads a cache from ``ref`` (by its tag, or ``digest``)."""

    def __init__(self, client: RegistryClient, ref: str, content: ContentStore, *, digest: str = "") -> None:
        self.client = client
        self.ref = cache_reference(ref)
        self.content = content
        self.where = f"{ref}{'@' + digest if digest else ''}"
        data, _ = client.get_manifest(self.ref, digest or self.ref.tag)
        self.manifest_digest = sha256_digest(data)
        image = image_manifest_parts(data, self.where)
        config_blob = image[0] if image is not None else parse_root(data, self.where).config
        config_bytes = self._small_blob(config_blob.digest, config_blob.size)
        if image is not None:
            # An image pushed with --export-cache type=inline: the cache is in its config.
            self.config, self.root = parse_inline(config_bytes, config_blob, image[1], self.where)
        else:
            self.root = parse_root(data, self.where)
            self.config = parse_config(config_bytes, self.where)
        self.records: list[ImportRecord] = import_records(self.config, self.root, self.where)
        self.bytes_read = len(data) + len(config_bytes)

    def _small_blob(self, digest: str, size: int) -> bytes:
        """A config blob, through the content store (verified as it is fetched)."""
        if not self.content.has(digest):
            self.client.fetch_blob(self.ref, self._desc(digest, size), self.content)
        return self.content.read(digest)

    def prefetch(self, layers: Sequence[ImportLayer]) -> None:
        """Nothing: a registry blob is fetched when its unpack needs it (fetching ahead is a download)."""

    def unpack_streamed(self, digest: str, size: int, diff_id: str, target: str, mode: WhiteoutMode) -> None:
        """Download the layer blob straight into ``target``, never stored: its bytes are hashed and
        unpacked as they arrive, so they are written once (for a blob not in the content store).

        ``DigestMismatch`` when the blob or its content is not what ``digest``/``diff_id`` say, and
        ``RegistryError`` when the download fails or breaks off: either way after part of it may have
        been applied, so the caller discards ``target``.
        """
        with self.client.open_blob(self.ref, self._desc(digest, size)) as stream:
            _, actual, got = apply_layer_stream(
                stream, target, mode=mode, layer=digest, expected_diff_id=diff_id
            )
        if actual != digest or got != size:
            raise DigestMismatch(
                f"blob {digest} of {self.ref}", f"{digest} ({size} bytes)", f"{actual} ({got} bytes)"
            )

    def blob(self, digest: str, size: int, work: Path, diff_id: str = "") -> BlobAccess:
        """The layer blob, fetched into the content store when missing (verified as it is written).

        A blob already in the store is checked again by the unpack (``verified`` is false).
        """
        if self.content.has(digest):
            return BlobAccess(path=Path(self.content.path(digest)), read=0)
        path = self.client.fetch_blob(self.ref, self._desc(digest, size), self.content)
        return BlobAccess(path=Path(path), read=size, verified=True)

    @staticmethod
    def _desc(digest: str, size: int) -> Descriptor:
        return Descriptor(media_type="application/octet-stream", digest=digest, size=size)
