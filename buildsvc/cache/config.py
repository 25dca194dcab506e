"""The cache config (``application/vnd.buildkit.cacheconfig.v0``), in BuildKit's JSON shape.

::

    {"layers":  [{"blob": "sha256:..", "parent": -1,
                  "annotations": {"mediaType": "..", "diffID": "sha256:..", "size": 1, "createdAt": ".."}}],
     "records": [{"digest": "sha256:..", "layers": [{"layer": 0, "createdAt": ".."}],
                  "inputs": [[{"selector": "", "link": 1}]]}]}

A layer is one blob whose parent (by index) is the layer below it; a record is one cache key whose
results (BuildKit names the list ``layers`` in JSON) point at the top layer of the chain that holds
the result, and whose inputs link to the records of the vertex's inputs. A record's ``digest`` is
buildsvc's cache key for output 0; for another output it is derived from the key and the index, and
``buildsvc.key``/``buildsvc.output`` (ignored by BuildKit) say which; ``buildsvc.vertex`` names the
vertex that made it, so an import records it (a BuildKit cache has none: the vertex stays empty).
Parsing checks every index, so a malformed config fails here, naming the problem, never later as a
wrong cache hit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsvc.errors import InvalidInput

__all__ = [
    "CACHE_CONFIG_MEDIA_TYPE",
    "CacheConfig",
    "CacheConfigError",
    "CacheInput",
    "CacheLayer",
    "CacheRecord",
    "CacheResult",
    "LayerAnnotations",
    "config_json",
    "parse_config",
    "record_digest",
]

CACHE_CONFIG_MEDIA_TYPE = "application/vnd.buildkit.cacheconfig.v0"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class CacheConfigError(InvalidInput):
    """A cache config (or the manifest naming it) is malformed."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"cache {where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerAnnotations:
    """What BuildKit annotates a cache layer with."""

    media_type: str
    diff_id: str
    size: int
    created_at: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheLayer:
    """One layer blob; ``parent`` is the index of the layer below it (-1: none)."""

    blob: str
    parent: int
    annotations: LayerAnnotations


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheResult:
    """A record's result: the top layer of its chain."""

    layer: int
    created_at: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheInput:
    """A link from a record to the record of one of its inputs."""

    link: int
    selector: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecord:
    """One cache key (and output) and where its result is."""

    key: str
    """buildsvc's cache key (``sha256:...``)."""
    output: int = 0
    results: tuple[CacheResult, ...] = ()
    inputs: tuple[tuple[CacheInput, ...], ...] = ()
    vertex: str = ""
    """The vertex digest that made the result, when the exporter knew it (``buildsvc.vertex``)."""

    @property
    def digest(self) -> str:
        """The record's ``digest`` in the config."""
        return record_digest(self.key, self.output)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """The whole cache config."""

    layers: tuple[CacheLayer, ...] = ()
    records: tuple[CacheRecord, ...] = ()

    def chain(self, top: int) -> list[int]:
        """Layer indexes from the bottom of ``top``'s chain up to ``top``."""
        out: list[int] = []
        index = top
        while index != -1:
            out.append(index)
            index = self.layers[index].parent
        out.reverse()
        return out


def record_digest(key: str, output: int) -> str:
    """A record's digest: the key itself for output 0, else a digest of key and output."""
    if output == 0:
        return key
    return "sha256:" + hashlib.sha256(f"{key}#{output}".encode()).hexdigest()


def config_json(config: CacheConfig) -> bytes:
    """The config as BuildKit writes it (keys sorted, compact: the same config, the same digest)."""
    layers = [
        {
            "blob": layer.blob,
            "parent": layer.parent,
            "annotations": {
                "mediaType": layer.annotations.media_type,
                "diffID": layer.annotations.diff_id,
                "size": layer.annotations.size,
                **({"createdAt": layer.annotations.created_at} if layer.annotations.created_at else {}),
            },
        }
        for layer in config.layers
    ]
    records: list[dict[str, Any]] = []
    for record in config.records:
        doc: dict[str, Any] = {"digest": record.digest}
        if record.results:
            doc["layers"] = [
                {"layer": r.layer, **({"createdAt": r.created_at} if r.created_at else {})}
                for r in record.results
            ]
        if record.inputs:
            doc["inputs"] = [
                [{"selector": i.selector, "link": i.link} for i in group] for group in record.inputs
            ]
        if record.vertex:
            doc["buildsvc.vertex"] = record.vertex
        if record.output != 0:
            doc["buildsvc.key"] = record.key
            doc["buildsvc.output"] = record.output
        records.append(doc)
    return json.dumps({"layers": layers, "records": records}, sort_keys=True, separators=(",", ":")).encode()


def parse_config(data: bytes, where: str) -> CacheConfig:
    """Parse and check a cache config (``CacheConfigError`` naming ``where`` and the problem)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CacheConfigError(where, f"config is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CacheConfigError(where, "config is not a JSON object")
    raw_layers = _list(doc.get("layers", []), where, "layers")
    layers: list[CacheLayer] = []
    for i, raw in enumerate(raw_layers):
        item = _object(raw, where, f"layers[{i}]")
        parent = item.get("parent", 0 if i else -1)
        if not isinstance(parent, int) or parent < -1 or parent >= len(raw_layers) or parent == i:
            raise CacheConfigError(where, f"layers[{i}].parent is not a layer index: {parent!r}")
        ann = _object(item.get("annotations", {}), where, f"layers[{i}].annotations")
        size = ann.get("size", 0)
        if not isinstance(size, int) or size < 0:
            raise CacheConfigError(where, f"layers[{i}].annotations.size is not a size: {size!r}")
        diff_id = ann.get("diffID", "")
        if diff_id and not _DIGEST.match(str(diff_id)):
            raise CacheConfigError(where, f"layers[{i}].annotations.diffID is not a sha256 digest")
        layers.append(
            CacheLayer(
                blob=_digest(item.get("blob"), where, f"layers[{i}].blob"),
                parent=parent,
                annotations=LayerAnnotations(
                    media_type=str(ann.get("mediaType", "")),
                    diff_id=str(diff_id),
                    size=size,
                    created_at=str(ann.get("createdAt", "")),
                ),
            )
        )
    _check_acyclic(layers, where)
    raw_records = _list(doc.get("records", []), where, "records")
    records: list[CacheRecord] = []
    for i, raw in enumerate(raw_records):
        item = _object(raw, where, f"records[{i}]")
        digest = _digest(item.get("digest"), where, f"records[{i}].digest")
        key, output = digest, 0
        if "buildsvc.output" in item:
            key = _digest(item.get("buildsvc.key"), where, f"records[{i}].buildsvc.key")
            output = item["buildsvc.output"]
            if not isinstance(output, int) or output < 0 or record_digest(key, output) != digest:
                raise CacheConfigError(where, f"records[{i}]: buildsvc.key/output do not give its digest")
        results: list[CacheResult] = []
        # BuildKit writes a record's results as "layers"; "results" is accepted too.
        for j, res in enumerate(
            _list(item.get("layers", item.get("results", [])), where, f"records[{i}].layers")
        ):
            r = _object(res, where, f"records[{i}].layers[{j}]")
            layer = r.get("layer")
            if not isinstance(layer, int) or not 0 <= layer < len(layers):
                raise CacheConfigError(
                    where, f"records[{i}].layers[{j}].layer is not a layer index: {layer!r}"
                )
            results.append(CacheResult(layer=layer, created_at=str(r.get("createdAt", ""))))
        inputs: list[tuple[CacheInput, ...]] = []
        for j, group in enumerate(_list(item.get("inputs", []), where, f"records[{i}].inputs")):
            links: list[CacheInput] = []
            for k, link in enumerate(_list(group, where, f"records[{i}].inputs[{j}]")):
                ln = _object(link, where, f"records[{i}].inputs[{j}][{k}]")
                target = ln.get("link")
                if not isinstance(target, int) or not 0 <= target < len(raw_records) or target == i:
                    raise CacheConfigError(where, f"records[{i}].inputs[{j}][{k}].link is not a record index")
                links.append(CacheInput(link=target, selector=str(ln.get("selector", ""))))
            inputs.append(tuple(links))
        vertex = item.get("buildsvc.vertex", "")
        if vertex:
            vertex = _digest(vertex, where, f"records[{i}].buildsvc.vertex")
        records.append(
            CacheRecord(key=key, output=output, results=tuple(results), inputs=tuple(inputs), vertex=vertex)
        )
    return CacheConfig(layers=tuple(layers), records=tuple(records))


def _check_acyclic(layers: Sequence[CacheLayer], where: str) -> None:
    for start in range(len(layers)):
        seen: set[int] = set()
        index = start
        while index != -1:
            if index in seen:
                raise CacheConfigError(where, f"layers[{start}]: its parents form a cycle")
            seen.add(index)
            index = layers[index].parent


def _list(value: object, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise CacheConfigError(where, f"{what} is not a list")
    return value


def _object(value: object, where: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CacheConfigError(where, f"{what} is not an object")
    return value


def _digest(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise CacheConfigError(where, f"{what} is not a sha256 digest: {value!r}")
    return value
