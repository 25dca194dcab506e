"""Reading a cache back: for each record with a result, the layer chain that rebuilds it.

The root document and the config are checked against each other before anything is unpacked: a
config that names a blob the root does not list, or a layer without a diff id, is refused here.
Snapshot keys are the OCI chain ids of the diff ids (as for image layers), so a layer shared by
several records, or already unpacked by an earlier import, is unpacked once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from buildsvc.cache.config import CacheConfig, CacheConfigError
from buildsvc.cache.manifest import CacheRoot

__all__ = ["ImportLayer", "ImportRecord", "chain_ids", "import_records"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportLayer:
    """One layer to unpack: blob, diff id, and its snapshot key (chain id) and parent key."""

    blob: str
    size: int
    media_type: str
    diff_id: str
    key: str
    parent: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportRecord:
    """A record and the layers (bottom first) of its result."""

    key: str
    output: int
    layers: tuple[ImportLayer, ...]
    vertex: str = ""
    """The vertex that made it, when the cache says (empty for BuildKit's caches)."""

    @property
    def snapshot(self) -> str:
        """The key of the snapshot holding the result (the chain's top)."""
        return self.layers[-1].key


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI chain ids: ``chain(n) = sha256(chain(n-1) + " " + diff_id(n))``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(
            diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
        )
    return out


def import_records(config: CacheConfig, root: CacheRoot, where: str) -> list[ImportRecord]:
    """The records with a result, each with its layer chain (``CacheConfigError`` when inconsistent)."""
    out: list[ImportRecord] = []
    for n, record in enumerate(config.records):
        if not record.results:
            continue  # a link only (BuildKit's min mode writes these): nothing to unpack
        indexes = config.chain(record.results[0].layer)
        diff_ids: list[str] = []
        for i in indexes:
            layer = config.layers[i]
            listed = root.layers.get(layer.blob)
            if listed is None:
                raise CacheConfigError(
                    where, f"records[{n}]: layer {layer.blob} is not in the cache manifest"
                )
            if not layer.annotations.diff_id:
                raise CacheConfigError(where, f"layers[{i}] has no diffID annotation")
            diff_ids.append(layer.annotations.diff_id)
        keys = chain_ids(diff_ids)
        chain = tuple(
            ImportLayer(
                blob=config.layers[i].blob,
                size=root.layers[config.layers[i].blob].size,
                media_type=root.layers[config.layers[i].blob].media_type,
                diff_id=diff,
                key=key,
                parent=keys[j - 1] if j else None,
            )
            for j, (i, diff, key) in enumerate(zip(indexes, diff_ids, keys, strict=True))
        )
        out.append(ImportRecord(key=record.key, output=record.output, layers=chain, vertex=record.vertex))
    return out
