"""``type=local``: a layout directory as an export target and an import source."""

from __future__ import annotations

from pathlib import Path

from buildsvc.cache.config import CacheConfig, parse_config
from buildsvc.cache.imports import ImportRecord, import_records
from buildsvc.cache.layers import LayerBlob
from buildsvc.cache.layout import LayoutStore
from buildsvc.cache.manifest import parse_root

__all__ = ["LocalSource", "LocalTarget"]


class LocalTarget:
    """Writes an export into a layout directory (created when missing), tagged ``tag``."""

    def __init__(self, dest: str, tag: str) -> None:
        self.store = LayoutStore(dest, create=True)
        self.tag = tag

    def has_blob(self, digest: str) -> bool:
        """Whether the layout has the blob."""
        return self.store.has(digest)

    def put_blob(self, blob: LayerBlob) -> int:
        """Copy a layer blob in."""
        return self.store.put_file(blob.digest, blob.path)

    def put_bytes(self, data: bytes, media_type: str) -> int:
        """Store the config."""
        self.store.put_bytes(data)
        return len(data)

    def put_root(self, data: bytes, media_type: str) -> str:
        """Store the root document and tag it in ``index.json``."""
        digest = self.store.put_bytes(data)
        self.store.tag({"mediaType": media_type, "digest": digest, "size": len(data)}, self.tag)
        return digest


class LocalSource:
    """Reads a cache from a layout directory by ``tag`` or ``digest``."""

    def __init__(self, src: str, *, tag: str = "latest", digest: str = "") -> None:
        self.store = LayoutStore(src)
        self.where = f"{src} ({'@' + digest if digest else 'tag ' + tag})"
        entry = self.store.resolve(tag=tag, digest=digest)
        self.manifest_digest = str(entry["digest"])
        self.root = parse_root(self.store.read_blob(self.manifest_digest), self.where)
        self.config: CacheConfig = parse_config(self.store.read_blob(self.root.config.digest), self.where)
        self.records: list[ImportRecord] = import_records(self.config, self.root, self.where)
        self.bytes_read = self.root.config.size

    def blob(self, digest: str, size: int, work: Path) -> tuple[Path, int]:
        """The layer blob in the layout, its size and digest checked; bytes read.

        Read in place (no copy): the diff id is checked again as the layer is unpacked.
        """
        return self.store.blob_path(digest), self.store.verify_blob(digest, size)
