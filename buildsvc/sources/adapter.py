"""The solver's ``ImageSource`` port, served by the image store.

The solver names images by source identifier (``docker-image://REF``, ``oci-layout://PATH@DIGEST``)
and platform; this adapter resolves them (for the cache key: the manifest digest an identifier
names now) and pulls them, telling the solver which layer snapshots the pull made so it can record
them.
"""

from __future__ import annotations

from buildsvc.solver.worker import ImageLayerSnapshot, Platform, PulledImage, Snapshotter
from buildsvc.sources.images import DOCKER_IMAGE_SCHEME, ImageStore
from buildsvc.sources.layout import SCHEME as LAYOUT_SCHEME
from buildsvc.sources.layout import OciLayout, parse_layout_ref
from buildsvc.sources.platforms import ImagePlatform
from buildsvc.sources.reference import parse_reference

__all__ = ["StoreImageSource"]


def _platform(platform: Platform) -> ImagePlatform:
    return ImagePlatform(os=platform.os, architecture=platform.architecture)


class StoreImageSource:
    """Resolves and pulls images through an :class:`ImageStore`."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def resolve(self, identifier: str, platform: Platform) -> str:
        """The digest of the image manifest ``identifier`` names for ``platform`` now."""
        if identifier.startswith(LAYOUT_SCHEME):
            ref = parse_layout_ref(identifier)
            return OciLayout(ref.path).resolve(ref, _platform(platform)).digest
        ref_ = parse_reference(identifier.removeprefix(DOCKER_IMAGE_SCHEME))
        return self.store.resolve(ref_, _platform(platform)).digest

    def pull(self, identifier: str, platform: Platform, snapshotter: Snapshotter) -> PulledImage:
        """Unpack the image; layers already there are reused and reported as not created."""
        before = {s.key for s in snapshotter.list()}
        pulled = self.store.pull(identifier, snapshotter, platform=_platform(platform))
        layers = []
        parent: str | None = None
        for key in pulled.snapshot_keys:
            layers.append(ImageLayerSnapshot(key=key, parent=parent, created=key not in before))
            parent = key
        return PulledImage(
            manifest_digest=pulled.manifest_digest,
            top=pulled.top_snapshot,
            layers=tuple(layers),
            env=pulled.config.env,
            cwd=pulled.config.working_dir,
            user=pulled.config.user,
        )
