"""Pull images into snapshots: ``docker-image://`` from a registry, ``oci-layout://`` from disk.

As containerd's unpacker: each layer becomes one committed snapshot keyed by the layer's chain
id (``key_prefix + chainID``), stacked on the snapshot of the layers below it, so images that
share base layers share snapshots and a layer already unpacked is neither downloaded nor applied
again. Blobs are kept in a content-addressed cache under the store's root, so pulling the same
image again (into any snapshotter) downloads no blob; the manifests and indexes read are kept there
too, so a reference pinned by digest whose manifests are held is resolved without the network, as
BuildKit resolves from its content store (:func:`resolve_image`).

On overlay, a layer is applied straight into the snapshot's upper directory with overlay
whiteouts, while it is unmounted (offline changes to an upper dir are what overlayfs allows); the
upper dir is found in the mount's own options, so the ``Snapshotter`` port needs no extension.
Every other snapshot gets the layer applied to its mounted full tree, whiteouts as deletions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from buildsvc.errors import Conflict, NotFound
from buildsvc.keyed_locks import KeyedLocks
from buildsvc.solver.worker import SnapshotKind, Snapshotter
from buildsvc.sources.content import ContentStore
from buildsvc.sources.errors import DigestMismatch, InvalidImage
from buildsvc.sources.layout import SCHEME as LAYOUT_SCHEME
from buildsvc.sources.layout import OciLayout, parse_layout_ref
from buildsvc.sources.manifests import (
    Descriptor,
    ImageConfig,
    ResolvedImage,
    parse_image_config,
    resolve_from,
)
from buildsvc.sources.platforms import ImagePlatform, host_platform
from buildsvc.sources.reference import Reference, parse_reference
from buildsvc.sources.registry import RegistryClient
from buildsvc.sources.unpack import WhiteoutMode, apply_layer

DOCKER_IMAGE_SCHEME = "docker-image://"
FETCHES_AT_ONCE = 3
"""Layers of one pull downloaded at the same time (dockerd's and containerd's default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    """An image unpacked into snapshots."""

    source: str
    """The normalized source (``docker.io/library/busybox:latest`` or ``oci-layout://...``)."""
    manifest_digest: str
    """The digest of the platform's image manifest."""
    index_digest: str | None
    """The digest of the index it was picked from, when the source named an index."""
    config: ImageConfig
    config_digest: str
    top_snapshot: str | None
    """The committed snapshot of the whole image (``None`` for an image with no layers)."""
    snapshot_keys: tuple[str, ...]
    """One committed snapshot per layer, bottom first."""
    downloaded: tuple[str, ...]
    """Blobs this pull had to fetch (empty when everything was cached)."""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain ids of a layer stack: ``chain(n) = sha256(chain(n-1) + " " + diff_id(n))``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class ImageStore:
    """Resolves, caches and unpacks images; one per daemon root."""

    def __init__(self, root: str, *, registry: RegistryClient | None = None) -> None:
        """Cache blobs under ``root``; talk to registries through ``registry`` (or a default)."""
        self.content = ContentStore(root)
        self._by_diff_id = os.path.join(self.content.root, "layers-by-diff-id")
        self.registry = registry or RegistryClient()
        self._unpacks = KeyedLocks()

    def pull(
        self,
        source: str,
        snapshotter: Snapshotter,
        *,
        key_prefix: str = "",
        platform: ImagePlatform | None = None,
    ) -> PulledImage:
        """Pull ``source`` (``[docker-image://]REF`` or ``oci-layout://PATH[:TAG][@DIGEST]``)."""
        wanted = platform or host_platform()
        if source.startswith(LAYOUT_SCHEME):
            layout_ref = parse_layout_ref(source)
            layout = OciLayout(layout_ref.path)
            resolved = layout.resolve(layout_ref, wanted)
            return self._unpack(
                str(layout_ref), resolved, _LayoutFetcher(layout, self.content), snapshotter, key_prefix
            )
        ref = parse_reference(source.removeprefix(DOCKER_IMAGE_SCHEME))
        resolved = self.resolve(ref, wanted)
        return self._unpack(
            str(ref), resolved, _RegistryFetcher(self.registry, ref, self.content), snapshotter, key_prefix
        )

    def resolve(self, ref: Reference, platform: ImagePlatform | None = None) -> ResolvedImage:
        """``ref`` resolved to ``platform``'s manifest (see :func:`resolve_image`)."""
        return resolve_image(self.registry, self.content, ref, platform or host_platform())

    def _unpack(
        self,
        name: str,
        resolved: ResolvedImage,
        fetcher: _Fetcher,
        snapshotter: Snapshotter,
        key_prefix: str,
    ) -> PulledImage:
        manifest = resolved.manifest
        fetcher.ensure(manifest.config)
        config = parse_image_config(name, self.content.read(manifest.config.digest))
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidImage(
                name, f"{len(manifest.layers)} layers but {len(config.diff_ids)} diff ids in the config"
            )
        layers = list(zip(manifest.layers, config.diff_ids, chain_ids(config.diff_ids), strict=True))
        missing = [
            layer for layer, _, chain_id in layers if not _committed(snapshotter, key_prefix + chain_id)
        ]
        keys: list[str] = []
        parent: str | None = None
        with _Prefetch(fetcher, missing) as prefetch:
            for layer, diff_id, chain_id in layers:
                key = key_prefix + chain_id
                with self._unpacks.hold(f"{snapshotter.name}/{key}"):
                    if not _committed(snapshotter, key):
                        prefetch.ensure(layer)
                        _unpack_layer(
                            snapshotter,
                            key,
                            parent,
                            self.content.path(layer.digest),
                            digest=layer.digest,
                            diff_id=diff_id,
                        )
                keys.append(key)
                parent = key
        self._remember_layers(name, manifest.layers, config.diff_ids)
        fetched = set(fetcher.downloaded)  # in the manifest's order, not the downloads' finishing order
        in_order = dict.fromkeys([manifest.config.digest, *(layer.digest for layer in manifest.layers)])
        return PulledImage(
            source=name,
            manifest_digest=resolved.digest,
            index_digest=resolved.index_digest,
            config=config,
            config_digest=manifest.config.digest,
            top_snapshot=parent,
            snapshot_keys=tuple(keys),
            downloaded=tuple(digest for digest in in_order if digest in fetched),
        )

    def _remember_layers(self, name: str, layers: Sequence[Descriptor], diff_ids: Sequence[str]) -> None:
        """Note each layer's blob by its diff id, so an export can reuse the compressed blob (as
        containerd's ``containerd.io/uncompressed`` label does) and push it by mounting it from the
        repository it came from.
        """
        os.makedirs(self._by_diff_id, exist_ok=True)
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            path = os.path.join(self._by_diff_id, diff_id.replace(":", "-"))
            if os.path.exists(path):
                continue
            doc = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size, "source": name}
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, path)

    def layer_blob(self, diff_id: str) -> tuple[Descriptor, str] | None:
        """The compressed blob of a layer this store pulled (and the image it came from), if its
        bytes are still in the content store.
        """
        path = os.path.join(self._by_diff_id, diff_id.replace(":", "-"))
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        desc = Descriptor(media_type=doc["mediaType"], digest=doc["digest"], size=int(doc["size"]))
        return (desc, str(doc.get("source", ""))) if self.content.has(desc.digest) else None


def resolve_image(
    registry: RegistryClient, content: ContentStore, ref: Reference, platform: ImagePlatform
) -> ResolvedImage:
    """Resolve ``ref`` to ``platform``'s image manifest, keeping every manifest and index it reads
    in ``content``.

    A reference pinned by digest whose manifests are all held in ``content`` is answered from there,
    without the network (as BuildKit answers from its content store): a digest names its bytes for
    good, and a held blob is re-hashed as it is read, so the answer is the registry's. Anything not
    held, and every tag, is asked of the registry.
    """
    if ref.digest is not None and ref.digest.startswith("sha256:"):
        held = _resolve_held(str(ref), ref.digest, content, platform)
        if held is not None:
            return held
    return registry.resolve(ref, platform, keep=content)


class _NotHeld(Exception):
    """A manifest the content store does not hold (or holds corrupt)."""


def _held(content: ContentStore, digest: str) -> bytes:
    try:
        return content.read(digest)
    except (OSError, DigestMismatch):
        raise _NotHeld(digest) from None


def _resolve_held(
    name: str, digest: str, content: ContentStore, platform: ImagePlatform
) -> ResolvedImage | None:
    """What the registry would resolve ``digest`` to, from ``content`` alone; None unless every
    manifest on the way is held.
    """
    try:
        root = _held(content, digest)
        try:
            named = json.loads(root).get("mediaType")
        except (ValueError, AttributeError):
            named = None
        if not named:
            # Its type would come from the registry's Content-Type header, which is not kept.
            return None

        def fetch_child(entry: Descriptor) -> bytes:
            return _held(content, entry.digest)

        return resolve_from(name, (root, None), fetch_child, platform)
    except _NotHeld:
        return None


def pull_image(
    ref: str,
    snapshotter: Snapshotter,
    key_prefix: str = "",
    platform: ImagePlatform | None = None,
    *,
    store: ImageStore,
) -> PulledImage:
    """Pull ``ref`` into ``snapshotter`` through ``store`` (see ``ImageStore.pull``)."""
    return store.pull(ref, snapshotter, key_prefix=key_prefix, platform=platform)


class _Fetcher:
    """Gets blobs into the content store (verified), remembering which it had to fetch."""

    def __init__(self, content: ContentStore) -> None:
        self.content = content
        self.downloaded: list[str] = []

    def ensure(self, desc: Descriptor) -> None:
        if not self.content.has(desc.digest):
            self._fetch(desc)
            self.downloaded.append(desc.digest)

    def _fetch(self, desc: Descriptor) -> None:
        raise NotImplementedError


class _Prefetch:
    """Downloads an image's missing layers ahead, at most :data:`FETCHES_AT_ONCE` at a time, while
    the layers before them unpack: a pull takes about its longest download plus the unpacks, not
    the sum of both. Unpacking stays in order, one layer on top of the other.
    """

    def __init__(self, fetcher: _Fetcher, layers: Sequence[Descriptor]) -> None:
        self._fetcher = fetcher
        self._pool = ThreadPoolExecutor(max_workers=FETCHES_AT_ONCE, thread_name_prefix="layer-fetch")
        # First needed, first asked for; a blob the manifest names twice is fetched once.
        self._ahead: dict[str, Future[None]] = {}
        for layer in layers:
            if layer.digest not in self._ahead:
                self._ahead[layer.digest] = self._pool.submit(fetcher.ensure, layer)

    def ensure(self, layer: Descriptor) -> None:
        """Return once ``layer`` is in the content store (its download's error, if it failed)."""
        ahead = self._ahead.get(layer.digest)
        if ahead is None:
            self._fetcher.ensure(layer)
        else:
            ahead.result()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        # After a failure, downloads not yet started are dropped; those running are waited for, so
        # nothing writes to the content store once the pull has returned.
        self._pool.shutdown(wait=True, cancel_futures=True)


class _RegistryFetcher(_Fetcher):
    def __init__(self, registry: RegistryClient, ref: Reference, content: ContentStore) -> None:
        super().__init__(content)
        self._registry = registry
        self._ref = ref

    def _fetch(self, desc: Descriptor) -> None:
        self._registry.fetch_blob(self._ref, desc, self.content)


class _LayoutFetcher(_Fetcher):
    def __init__(self, layout: OciLayout, content: ContentStore) -> None:
        super().__init__(content)
        self._layout = layout

    def _fetch(self, desc: Descriptor) -> None:
        if not self._layout.blobs.has(desc.digest):
            raise InvalidImage(self._layout.path, f"layout has no blob {desc.digest}")
        # Copied through ingest, so a corrupt blob in the layout is caught like a corrupt download.
        self.content.ingest(
            desc.digest,
            self._layout.blobs.read_chunks(desc.digest),
            size=desc.size,
            what=f"blob {desc.digest} of {self._layout.path}",
        )


def _committed(snapshotter: Snapshotter, key: str) -> bool:
    try:
        info = snapshotter.stat(key)
    except NotFound:
        return False
    if info.kind is not SnapshotKind.COMMITTED:
        raise InvalidImage(key, f"snapshot {key} exists but is {info.kind.value}, not committed")
    return True


def _unpack_layer(
    snapshotter: Snapshotter, key: str, parent: str | None, blob: str, *, digest: str, diff_id: str
) -> None:
    active = f"{key}.unpack-{uuid.uuid4().hex[:12]}"
    snapshotter.prepare(active, parent)
    try:
        mount = snapshotter.mount(active)
        mounted = True
        try:
            upper = overlay_upper_dir(mount.path)
            if upper is not None:
                snapshotter.unmount(active)
                mounted = False
                apply_layer(blob, upper, mode=WhiteoutMode.OVERLAY, layer=digest, expected_diff_id=diff_id)
            else:
                apply_layer(
                    blob, mount.path, mode=WhiteoutMode.DELETE, layer=digest, expected_diff_id=diff_id
                )
        finally:
            if mounted:
                snapshotter.unmount(active)
        try:
            snapshotter.commit(key, active)
        except Conflict:
            # Someone else (another daemon on the same root) committed this layer first: use theirs.
            if not _committed(snapshotter, key):
                raise
            snapshotter.remove(active)
    except BaseException:
        with contextlib.suppress(NotFound):
            snapshotter.remove(active)
        raise


def overlay_upper_dir(path: str) -> str | None:
    """The upper directory of the overlay mounted at ``path``, or ``None`` if it is no overlay."""
    target = os.path.realpath(path)
    found: str | None = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or _unescape(fields[4]) != target:
                continue
            fstype, _source, options = [*right.split(), "", "", ""][:3]
            found = None
            if fstype == "overlay":
                for option in options.split(","):
                    if option.startswith("upperdir="):
                        found = _unescape(option.removeprefix("upperdir="))
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
