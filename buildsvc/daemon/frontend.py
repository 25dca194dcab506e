"""Frontends run by the daemon: a frontend name, its options and local dirs in, a definition out.

As in BuildKit, the daemon (not the client) runs ``dockerfile.v0``: it reads the Dockerfile from the
``dockerfile`` local dir, resolves base images through the daemon's image store, and solves the
definition it gets; the frontend and its options are recorded with the solve.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path

from buildsvc.errors import InvalidInput
from buildsvc.frontends.dockerfile import DockerfileResult, build_definition, read_dockerfile
from buildsvc.frontends.dockerfile.resolver import RegistryImageResolver, ResolveCache
from buildsvc.sources import ImageStore

__all__ = ["FRONTENDS", "run_frontend", "wants_fresh_resolve"]

FRONTENDS = ("dockerfile.v0",)

# One per image store (one per engine), kept beside its blobs so that embedded builds (a process
# each) share it too: a rebuild within the cache's lifetime does not ask the registry what its base
# image's tag names now (see buildsvc.frontends.dockerfile.resolver).
RESOLVED_FILE = "resolved.json"
_RESOLVED: weakref.WeakKeyDictionary[ImageStore, ResolveCache] = weakref.WeakKeyDictionary()


def wants_fresh_resolve(attrs: Mapping[str, str]) -> bool:
    """Whether the frontend options ask for the registry's current answer (buildctl ``--no-cache``,
    or ``--opt image-resolve-mode=pull``), not one resolved a few minutes ago.
    """
    return attrs.get("image-resolve-mode") == "pull" or "no-cache" in attrs


def run_frontend(
    frontend: str, attrs: Mapping[str, str], local_dirs: Mapping[str, Path], images: ImageStore
) -> DockerfileResult:
    """Make the definition a frontend describes (``InvalidInput`` for an unknown one)."""
    if frontend != "dockerfile.v0":
        raise InvalidInput(f"unknown frontend {frontend!r} (this daemon has: {', '.join(FRONTENDS)})")
    for name in ("context", "dockerfile"):
        if name not in local_dirs:
            raise InvalidInput(f"frontend dockerfile.v0 needs the local dir {name!r} (--local {name}=DIR)")
    filename = attrs.get("filename", "Dockerfile")
    text = read_dockerfile(local_dirs["dockerfile"], filename)
    cache = _RESOLVED.get(images)
    if cache is None:
        cache = _RESOLVED.setdefault(images, ResolveCache(path=Path(images.content.root) / RESOLVED_FILE))
    resolver = RegistryImageResolver.for_store(images, cache=cache, fresh=wants_fresh_resolve(attrs))
    return build_definition(text, options=attrs, resolver=resolver)
