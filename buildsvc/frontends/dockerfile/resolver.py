"""An :class:`ImageConfigResolver` backed by :mod:`buildsvc.sources`: a registry and a content store.

It asks the registry for the reference's manifest (or index, picking the platform's manifest),
downloads the image config blob into the content store (verified against its digest, and kept, so
the pull that follows does not fetch it again) and returns the digest to pin the image by. The
manifests read are kept too: a reference pinned by a digest the store holds is answered from it,
without the network (``sources.images.resolve_image``).

A :class:`ResolveCache` keeps what a reference resolved to for a few minutes, as BuildKit's daemon
does, so a rebuild does not ask the registry again; a build that must see the registry's current
answer asks for it with the frontend option ``image-resolve-mode=pull`` or ``no-cache``
(buildctl's ``--no-cache``). Whatever a build used is pinned in its definition, recorded in the log.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from buildsvc.frontends.dockerfile.config import Platform
from buildsvc.sources import (
    ContentStore,
    ImageConfig,
    ImagePlatform,
    ImageStore,
    RegistryClient,
    parse_reference,
)
from buildsvc.sources.images import resolve_image
from buildsvc.sources.manifests import parse_image_config

__all__ = ["RESOLVE_TTL", "RegistryImageResolver", "ResolveCache"]

RESOLVE_TTL = 300.0
"""Seconds a resolved reference is reused without asking the registry."""


class ResolveCache:
    """``(reference, platform) -> (pinned digest, config digest)``, each kept ``ttl`` seconds.

    With ``path`` the entries are also kept in that file (JSON, replaced whole), so an embedded
    build, a process of its own, finds what the last one resolved. The file is only a cache: one
    that cannot be read or written is ignored.
    """

    def __init__(
        self,
        ttl: float = RESOLVE_TTL,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
    ) -> None:
        self.ttl = ttl
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, Platform], tuple[float, str, str]] = {}
        self._loaded = path is None

    def get(self, ref: str, platform: Platform) -> tuple[str, str] | None:
        """The pinned and config digests ``ref`` resolved to less than ``ttl`` ago, or None."""
        with self._lock:
            self._load()
            entry = self._entries.get((ref, platform))
            if entry is None:
                return None
            age = self._clock() - entry[0]
            if not 0 <= age < self.ttl:  # expired, or from a clock that has since gone back
                del self._entries[(ref, platform)]
                return None
            return entry[1], entry[2]

    def put(self, ref: str, platform: Platform, pinned: str, config_digest: str) -> None:
        """Remember what ``ref`` resolved to just now."""
        with self._lock:
            self._load()
            now = self._clock()
            self._entries[(ref, platform)] = (now, pinned, config_digest)
            for key in [k for k, e in self._entries.items() if not 0 <= now - e[0] < self.ttl]:
                del self._entries[key]
            self._save()

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        try:
            doc = json.loads(self.path.read_text())
            for item in doc:
                platform = Platform(os=item["os"], architecture=item["architecture"], variant=item["variant"])
                entry = (float(item["time"]), str(item["pinned"]), str(item["config"]))
                self._entries.setdefault((str(item["ref"]), platform), entry)
        except (OSError, ValueError, TypeError, KeyError):
            return  # no file yet, or not one we wrote: start empty

    def _save(self) -> None:
        if self.path is None:
            return
        doc = [
            {
                "ref": ref,
                "os": platform.os,
                "architecture": platform.architecture,
                "variant": platform.variant,
                "time": at,
                "pinned": pinned,
                "config": config,
            }
            for (ref, platform), (at, pinned, config) in self._entries.items()
        ]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


class RegistryImageResolver:
    """Resolves base images through a :class:`RegistryClient`, caching config blobs in ``content``.

    With ``cache``, a reference resolved recently is answered from it (and its config from
    ``content``); ``fresh`` asks the registry all the same and updates ``cache``.
    """

    def __init__(
        self,
        registry: RegistryClient,
        content: ContentStore,
        *,
        cache: ResolveCache | None = None,
        fresh: bool = False,
    ) -> None:
        self.registry = registry
        self.content = content
        self.cache = cache
        self.fresh = fresh

    @classmethod
    def for_store(
        cls, store: ImageStore, *, cache: ResolveCache | None = None, fresh: bool = False
    ) -> RegistryImageResolver:
        """Use the image store's registry client and content store (the daemon's)."""
        return cls(store.registry, store.content, cache=cache, fresh=fresh)

    def resolve(self, ref: str, platform: Platform) -> tuple[str, ImageConfig]:
        """Pin ``ref`` by the digest it names now and read its config for ``platform``."""
        reference = parse_reference(ref)
        if self.cache is not None and not self.fresh:
            known = self.cache.get(ref, platform)
            # The config blob may have been pruned since: then ask the registry again.
            if known is not None and self.content.has(known[1]):
                return known[0], parse_image_config(str(reference), self.content.read(known[1]))
        wanted = ImagePlatform(os=platform.os, architecture=platform.architecture, variant=platform.variant)
        # A pinned reference whose manifests are held is answered without the network.
        resolved = resolve_image(self.registry, self.content, reference, wanted)
        config = resolved.manifest.config
        if not self.content.has(config.digest):
            self.registry.fetch_blob(reference, config, self.content)
        parsed = parse_image_config(str(reference), self.content.read(config.digest))
        # Like BuildKit, pin the digest the reference named (the index, for a multi-platform image):
        # pulling it for the same platform picks the same manifest.
        pinned = resolved.index_digest or resolved.digest
        if self.cache is not None:
            self.cache.put(ref, platform, pinned, config.digest)
        return pinned, parsed
