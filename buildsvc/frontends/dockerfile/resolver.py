"""An :class:`ImageConfigResolver` backed by :mod:`buildsvc.sources`: a registry and a content store.

It asks the registry for the reference's manifest (or index, picking the platform's manifest),
downloads the image config blob into the content store (verified against its digest, and kept, so
the pull that follows does not fetch it again) and returns the digest to pin the image by.
"""

from __future__ import annotations

from buildsvc.frontends.dockerfile.config import Platform
from buildsvc.sources import (
    ContentStore,
    ImageConfig,
    ImagePlatform,
    ImageStore,
    RegistryClient,
    parse_reference,
)
from buildsvc.sources.manifests import parse_image_config

__all__ = ["RegistryImageResolver"]


class RegistryImageResolver:
    """Resolves base images through a :class:`RegistryClient`, caching config blobs in ``content``."""

    def __init__(self, registry: RegistryClient, content: ContentStore) -> None:
        self.registry = registry
        self.content = content

    @classmethod
    def for_store(cls, store: ImageStore) -> RegistryImageResolver:
        """Use the image store's registry client and content store (the daemon's)."""
        return cls(store.registry, store.content)

    def resolve(self, ref: str, platform: Platform) -> tuple[str, ImageConfig]:
        """Pin ``ref`` by the digest it names now and read its config for ``platform``."""
        reference = parse_reference(ref)
        wanted = ImagePlatform(os=platform.os, architecture=platform.architecture, variant=platform.variant)
        resolved = self.registry.resolve(reference, wanted)
        config = resolved.manifest.config
        if not self.content.has(config.digest):
            self.registry.fetch_blob(reference, config, self.content)
        parsed = parse_image_config(str(reference), self.content.read(config.digest))
        # Like BuildKit, pin the digest the reference named (the index, for a multi-platform image):
        # pulling it for the same platform picks the same manifest.
        return resolved.index_digest or resolved.digest, parsed
