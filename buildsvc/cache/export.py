"""What a solve's results become in a cache, and writing them to a store.

:func:`plan_records` picks the records: ``mode=min`` takes only the result's own record (its layer
chain is everything needed to reuse the result); ``mode=max`` takes every step's outputs, each
linked to the records of its inputs. :func:`write_cache` turns each record's snapshot chain into
layers (one per snapshot, parent = the snapshot below), writes the blobs the target lacks, the
config and the root document, and says what it moved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from buildsvc.cache.config import (
    CACHE_CONFIG_MEDIA_TYPE,
    CacheConfig,
    CacheInput,
    CacheLayer,
    CacheRecord,
    CacheResult,
    LayerAnnotations,
    config_json,
)
from buildsvc.cache.layers import LayerBlob
from buildsvc.cache.manifest import build_root

__all__ = ["CacheTarget", "ExportSummary", "PlannedRecord", "Step", "plan_records", "write_cache"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One vertex of a solve: its cache key, output snapshots and inputs (vertex, output index)."""

    vertex: str
    key: str
    outputs: tuple[str | None, ...]
    inputs: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedRecord:
    """A record to export: key, output, the snapshot holding it, its inputs' records (key, output)."""

    key: str
    output: int
    snapshot: str
    inputs: tuple[tuple[str, int], ...] = ()
    vertex: str = ""


def plan_records(steps: Mapping[str, Step], result: tuple[str, int], mode: str) -> list[PlannedRecord]:
    """The records ``mode`` exports for a solve whose result is output ``result[1]`` of ``result[0]``."""
    vertex, index = result
    if mode == "min":
        step = steps[vertex]
        snapshot = step.outputs[index]
        return (
            []
            if snapshot is None
            else [PlannedRecord(key=step.key, output=index, snapshot=snapshot, vertex=step.vertex)]
        )
    planned: list[PlannedRecord] = []
    for step in steps.values():
        inputs = tuple(
            (steps[v].key, i) for v, i in step.inputs if v in steps and steps[v].outputs[i] is not None
        )
        for output, snapshot in enumerate(step.outputs):
            if snapshot is not None:
                planned.append(
                    PlannedRecord(
                        key=step.key, output=output, snapshot=snapshot, inputs=inputs, vertex=step.vertex
                    )
                )
    return planned


class CacheTarget(Protocol):
    """Where an export goes (a layout directory, a registry repository)."""

    def has_blob(self, digest: str) -> bool:
        """Whether the target already has the blob."""
        ...

    def put_blob(self, blob: LayerBlob) -> int:
        """Store a layer blob; the bytes moved."""
        ...

    def put_bytes(self, data: bytes, media_type: str) -> int:
        """Store a small blob (the config); the bytes moved."""
        ...

    def put_root(self, data: bytes, media_type: str) -> str:
        """Store the root document under the export's tag; its digest."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSummary:
    """What an export wrote."""

    manifest_digest: str
    records: int
    layers: int
    layers_written: int
    bytes_written: int


def write_cache(
    records: Sequence[PlannedRecord],
    parent_of: Callable[[str], str | None],
    layer_of: Callable[[str], LayerBlob],
    target: CacheTarget,
    *,
    oci: bool = True,
    image_manifest: bool = False,
    parallel: int = 2,
) -> ExportSummary:
    """Write ``records`` (their layers first, then config and root) to ``target``.

    The layers of every snapshot needed are made first, ``parallel`` at a time (tarring and
    hashing one layer leaves a core idle: hashing and file I/O release the GIL).
    """
    layer_index: dict[str, int] = {}
    layers: list[CacheLayer] = []
    blobs: dict[str, LayerBlob] = {}
    made = _make_layers(records, parent_of, layer_of, parallel)

    def add_chain(snapshot: str) -> int:
        chain: list[str] = []
        current: str | None = snapshot
        while current is not None and current not in layer_index:
            chain.append(current)
            current = parent_of(current)
        parent = -1 if current is None else layer_index[current]
        for snap in reversed(chain):
            blob = made[snap]
            blobs[blob.digest] = blob
            layers.append(
                CacheLayer(
                    blob=blob.digest,
                    parent=parent,
                    annotations=LayerAnnotations(
                        media_type=blob.media_type, diff_id=blob.diff_id, size=blob.size
                    ),
                )
            )
            parent = layer_index[snap] = len(layers) - 1
        return layer_index[snapshot]

    position = {(r.key, r.output): n for n, r in enumerate(records)}
    out: list[CacheRecord] = []
    for record in records:
        top = add_chain(record.snapshot)
        links = tuple((CacheInput(link=position[i]),) for i in record.inputs if i in position)
        out.append(
            CacheRecord(
                key=record.key,
                output=record.output,
                results=(CacheResult(layer=top),),
                inputs=links,
                vertex=record.vertex,
            )
        )
    config = config_json(CacheConfig(layers=tuple(layers), records=tuple(out)))
    moved = 0
    written = 0
    for digest, blob in blobs.items():
        if not target.has_blob(digest):
            moved += target.put_blob(blob)
            written += 1
    moved += target.put_bytes(config, CACHE_CONFIG_MEDIA_TYPE)
    root, media_type = build_root(config, _digest(config), layers, oci=oci, image_manifest=image_manifest)
    manifest_digest = target.put_root(root, media_type)
    return ExportSummary(
        manifest_digest=manifest_digest,
        records=len(out),
        layers=len(blobs),
        layers_written=written,
        bytes_written=moved + len(root),
    )


def _make_layers(
    records: Sequence[PlannedRecord],
    parent_of: Callable[[str], str | None],
    layer_of: Callable[[str], LayerBlob],
    parallel: int,
) -> dict[str, LayerBlob]:
    """The layer of every snapshot in the records' chains, by snapshot."""
    wanted: list[str] = []
    seen: set[str] = set()
    for record in records:
        current: str | None = record.snapshot
        while current is not None and current not in seen:
            seen.add(current)
            wanted.append(current)
            current = parent_of(current)
    if parallel <= 1 or len(wanted) <= 1:
        return {snap: layer_of(snap) for snap in wanted}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="cache-layer") as pool:
        return dict(zip(wanted, pool.map(layer_of, wanted), strict=True))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
