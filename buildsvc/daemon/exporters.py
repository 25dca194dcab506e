"""Image exporters: a build result as an OCI image, written as a layout tarball or pushed.

Both read the result through :meth:`Engine.view` (a recorded read-only view, so the export's
snapshot and ref are events of the build and the leak report stays empty). A build on a base image
(the Dockerfile frontend's config names the base's layers in ``rootfs.diff_ids``) reuses the base's
own layer blobs, as pulled, and adds ONE layer with what the build changed above them; without a
base, or when the base's blobs are no longer in the content store, the whole tree is one layer (see
:mod:`buildsvc.daemon.image_layers`). The image config is the frontend's when the build came from
it, else a minimal one for the host platform; ``rootfs`` and ``history`` are set here. The same
result and config give the same layer, config and manifest digests, whichever exporter.

``type=oci,dest=FILE[,name=REF]`` writes an OCI image layout tarball (``skopeo``/``umoci`` read it;
``org.opencontainers.image.ref.name`` is the tag of ``name``, ``io.containerd.image.name`` the full
name, as BuildKit writes them). ``type=image,name=REF,push=true`` pushes layer, config and manifest
through the engine's registry client (``registry.insecure=true`` allows plain HTTP to a loopback
registry for that push; the daemon's ``--insecure-registry HOST`` always uses plain HTTP to HOST).
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsvc.cache.inline import INLINE_CACHE_KEY, InlineCache
from buildsvc.daemon.exporter_specs import EXPORTER_TYPES, check_exporter, is_true
from buildsvc.daemon.image_layers import base_tree, walk_tree, write_diff_layer, write_full_layer
from buildsvc.daemon.outputs import CLIENT_DEST, CLIENT_OUTPUT, is_client_output, seal, staging_payload
from buildsvc.daemon.registry_push import client_for
from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev
from buildsvc.sources import OciLayout, host_platform, parse_reference
from buildsvc.sources.manifests import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    manifest_json,
    sha256_digest,
)
from buildsvc.sources.platforms import ImagePlatform
from buildsvc.sources.reference import Reference

if TYPE_CHECKING:  # the engine imports the solver, SQLAlchemy...: not for a client
    from buildsvc.daemon.engine import Engine
    from buildsvc.solver.engine import ResultRef

__all__ = [
    "EXPORTER_TYPES",
    "ExportedImage",
    "check_exporter",
    "export_image_layout",
    "is_true",
    "push_image",
    "run_exporters",
]

CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedImage:
    """What an image exporter made."""

    manifest_digest: str
    config_digest: str

    def response(self) -> dict[str, str]:
        """The exporter response keys BuildKit uses."""
        return {
            "containerimage.digest": self.manifest_digest,
            "containerimage.config.digest": self.config_digest,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layer:
    descriptor: Descriptor
    path: Path
    source: str = ""
    """For a base layer, the image it was pulled from (a push mounts the blob from there)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Image:
    layers: tuple[_Layer, ...]
    config: bytes
    manifest: bytes
    platform: ImagePlatform

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    def exported(self) -> ExportedImage:
        return ExportedImage(
            manifest_digest=self.manifest_digest,
            config_digest=self.config_digest,
        )


def export_image_layout(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    dest_tar: Path,
    *,
    name: str = "",
    image_config: Mapping[str, Any] | None = None,
    inline_cache: InlineCache | None = None,
    actor: str,
) -> ExportedImage:
    """Write the result as an OCI image layout tarball at ``dest_tar`` (replaced atomically)."""
    dest_tar = dest_tar.absolute()
    dest_tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".buildsvc-oci-", dir=dest_tar.parent) as work:
        image = _make_image(engine, result, build_ref, Path(work), image_config, inline_cache, actor=actor)
        layout = OciLayout(os.path.join(work, "layout"), create=True)
        for layer in image.layers:
            d = layer.descriptor
            layout.add_blob_chunks(d.digest, _file_chunks(layer.path), size=d.size)
        layout.add_blob(image.config)
        layout.add_blob(image.manifest)
        annotations: dict[str, str] = {}
        ref_name: str | None = None
        if name:
            ref = parse_reference(name)
            annotations[CONTAINERD_NAME_ANNOTATION] = str(ref)
            ref_name = ref.tag or ref.digest
        layout.add_manifest(
            Descriptor(
                media_type=OCI_MANIFEST,
                digest=image.manifest_digest,
                size=len(image.manifest),
                platform=image.platform,
                annotations=annotations,
            ),
            ref_name=ref_name,
        )
        partial = Path(work) / "layout.tar"
        _tar_layout(Path(layout.path), partial)
        os.replace(partial, dest_tar)
        return image.exported()


def push_image(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    name: str,
    *,
    image_config: Mapping[str, Any] | None = None,
    insecure: bool = False,
    inline_cache: InlineCache | None = None,
    actor: str,
) -> ExportedImage:
    """Push the result as an image to ``name`` (its tag); returns the digests pushed."""
    ref = parse_reference(name)
    tag = ref.tag
    if tag is None:
        raise InvalidInput(f"image name {name!r} has no tag to push to")
    target = Reference(domain=ref.domain, path=ref.path, tag=tag)
    with tempfile.TemporaryDirectory(prefix="buildsvc-push-", dir=engine.state.root) as work:
        image = _make_image(engine, result, build_ref, Path(work), image_config, inline_cache, actor=actor)
        with client_for(engine.registry, insecure=insecure) as client:
            for layer in image.layers:
                d = layer.descriptor
                client.push_blob(
                    target,
                    d.digest,
                    partial(_file_chunks, layer.path),
                    d.size,
                    mount_from=_same_registry_repo(layer.source, target),
                )
            client.push_blob_bytes(target, image.config)
            pushed = client.push_manifest(target, image.manifest, OCI_MANIFEST, tag=tag)
        if pushed != image.manifest_digest:  # pragma: no cover - same bytes, same hash
            raise AssertionError("pushed manifest digest differs")
        return image.exported()


def run_exporters(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    outputs: Sequence[Mapping[str, str]],
    *,
    image_config: Mapping[str, Any] | None = None,
    inline_cache: InlineCache | None = None,
    actor: str,
) -> dict[str, str]:
    """Run each (checked) exporter on ``result``; their merged response, which the solve records
    and ``--metadata-file`` writes; what they record is for ``actor``, who asked for the build.
    ``local``/``tar`` go through :class:`Engine`, the rest here.
    ``inline_cache`` (``--export-cache type=inline``) goes into the config of the image outputs.
    """
    response: dict[str, str] = {}
    for out in outputs:
        kind = out["type"]
        part: dict[str, str] = {}
        if kind == "image":
            image = push_image(
                engine,
                result,
                build_ref,
                out["name"],
                image_config=image_config,
                insecure=is_true(out.get("registry.insecure", "")),
                inline_cache=inline_cache,
                actor=actor,
            )
            part.update(image.response())
            part["image.name"] = out["name"]
        else:
            # For the client (client-dest): staged under the root, a local tree as a tar to unpack.
            index = int(out.get(CLIENT_OUTPUT, "0")) if is_client_output(out) else None
            root = engine.state.root
            dest = Path(out["dest"]) if index is None else staging_payload(root, build_ref, index)
            if kind == "local" and index is None:
                engine.export_local(result, dest, build_ref=build_ref, actor=actor)
            elif kind in ("local", "tar"):
                engine.export_tar(result, dest, build_ref=build_ref, actor=actor)
            else:
                image = export_image_layout(
                    engine,
                    result,
                    build_ref,
                    dest,
                    name=out.get("name", ""),
                    image_config=image_config,
                    inline_cache=inline_cache,
                    actor=actor,
                )
                part.update(image.response())
                if out.get("name"):
                    part["image.name"] = out["name"]
            if index is None:
                part[f"{kind}.dest"] = str(dest)
            else:
                part[f"{kind}.dest"] = out[CLIENT_DEST]
                part.update(seal(root, build_ref, index, kind).response())
        # Act, then record: what was written where, in the build's own stream.
        engine.state.store.append(
            f"build-{build_ref}",
            [ev.ExportCompleted(build_ref=build_ref, exporter=kind, attrs=dict(out), response=part)],
            actor=actor,
        )
        response.update(part)
    return response


# --- the image --------------------------------------------------------------------------------------


def _make_image(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    work: Path,
    image_config: Mapping[str, Any] | None,
    inline_cache: InlineCache | None = None,
    *,
    actor: str,
) -> _Image:
    layer_path = work / "layer.tar.gz"
    base = _base_layers(engine, image_config)
    with engine.view(result, build_ref, actor) as root:
        if base and root is not None:
            tree = base_tree([layer.path for layer in base])
            written = write_diff_layer(root, tree, layer_path)
        else:
            base = []
            written = write_full_layer(root, layer_path)
    layers = list(base)
    if written.entries or not base:  # a build that changed nothing above its base adds no layer
        new = Descriptor(media_type=OCI_LAYER_GZIP, digest=written.digest, size=written.size)
        layers.append(_Layer(descriptor=new, path=layer_path))
    diff_ids = [*_base_diff_ids(image_config)[: len(base)], written.diff_id][: len(layers)]
    config_doc = _config(image_config, diff_ids, base_count=len(base))
    # A base image's inline cache names the base's layers, not ours: never carried over.
    config_doc.pop(INLINE_CACHE_KEY, None)
    if inline_cache is not None:
        # The result's record, its layer chain the image's layers (see buildsvc.cache.inline).
        config_doc[INLINE_CACHE_KEY] = inline_cache.value(len(layers))
    platform = ImagePlatform(
        os=str(config_doc["os"]),
        architecture=str(config_doc["architecture"]),
        variant=str(config_doc.get("variant", "")),
    )
    config = json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    manifest = manifest_json(
        Manifest(
            media_type=OCI_MANIFEST,
            config=Descriptor(media_type=OCI_CONFIG, digest=sha256_digest(config), size=len(config)),
            layers=tuple(layer.descriptor for layer in layers),
        )
    )
    return _Image(layers=tuple(layers), config=config, manifest=manifest, platform=platform)


def _base_diff_ids(image_config: Mapping[str, Any] | None) -> list[str]:
    rootfs = (image_config or {}).get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    return [str(d) for d in diff_ids] if isinstance(diff_ids, list) else []


def _base_layers(engine: Engine, image_config: Mapping[str, Any] | None) -> list[_Layer]:
    """The base image's layer blobs, as pulled; empty when any of them is not in the store."""
    layers: list[_Layer] = []
    for diff_id in _base_diff_ids(image_config):
        found = engine.images.layer_blob(diff_id)
        if found is None:
            return []  # pruned since, or never pulled here: pack the whole tree instead
        desc, source = found
        # The same bytes under the OCI name of their type, as BuildKit writes OCI manifests.
        oci = replace(desc, media_type=_OCI_LAYER_TYPES.get(desc.media_type, desc.media_type))
        layers.append(
            _Layer(descriptor=oci, path=Path(engine.images.content.path(desc.digest)), source=source)
        )
    return layers


_OCI_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}


def _same_registry_repo(source: str, target: Reference) -> str:
    """The repository of ``source`` when it is on ``target``'s registry (a blob can be mounted)."""
    if not source:
        return ""
    try:
        ref = parse_reference(source)
    except InvalidInput:
        return ""  # an oci-layout source: nothing to mount from
    return ref.path if ref.domain == target.domain else ""


def _config(
    image_config: Mapping[str, Any] | None, diff_ids: list[str], *, base_count: int
) -> dict[str, Any]:
    if image_config:
        doc: dict[str, Any] = json.loads(json.dumps(dict(image_config)))  # a deep copy of plain JSON
    else:
        host = host_platform()
        doc = {"architecture": host.architecture, "os": host.os, "config": {}}
        if host.variant:
            doc["variant"] = host.variant
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    doc["history"] = [
        {"created_by": "buildsvc: a layer of the base image", "comment": "buildsvc.exporter.v0"}
        for _ in range(base_count)
    ] + [
        {"created_by": "buildsvc: the build result", "comment": "buildsvc.exporter.v0"}
        for _ in range(len(diff_ids) - base_count)
    ]
    return doc


def _tar_layout(layout: Path, dest: Path) -> None:
    """The layout directory as a tar (``oci-layout``, ``index.json``, ``blobs/...``), reproducibly."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in walk_tree(layout):
            if entry.name.startswith("."):
                continue
            info = tar.gettarinfo(str(entry), arcname=entry.relative_to(layout).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isreg():
                with entry.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
