"""Frontends run by the daemon: a frontend name, its options and local dirs in, a definition out.

As in BuildKit, the daemon (not the client) runs ``dockerfile.v0``: it reads the Dockerfile from the
``dockerfile`` local dir, resolves base images through the daemon's image store, and solves the
definition it gets; the frontend and its options are recorded with the solve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from buildsvc.errors import InvalidInput
from buildsvc.frontends.dockerfile import DockerfileResult, build_definition
from buildsvc.frontends.dockerfile.resolver import RegistryImageResolver
from buildsvc.sources import ImageStore

__all__ = ["FRONTENDS", "run_frontend"]

FRONTENDS = ("dockerfile.v0",)

MAX_DOCKERFILE_BYTES = 4 * 1024 * 1024


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
    text = _read_inside(local_dirs["dockerfile"], filename)
    return build_definition(text, options=attrs, resolver=RegistryImageResolver.for_store(images))


def _read_inside(directory: Path, filename: str) -> str:
    # The file name comes from the client: it must name a file inside the dir, not through a symlink out.
    root = directory.resolve()
    path = (root / filename).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise InvalidInput(f"dockerfile {filename!r} is outside the dockerfile dir {directory}")
    try:
        if path.stat().st_size > MAX_DOCKERFILE_BYTES:
            raise InvalidInput(f"dockerfile {filename!r} is larger than {MAX_DOCKERFILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no dockerfile {filename!r} in {directory}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"dockerfile {filename!r} is not UTF-8 text") from None
