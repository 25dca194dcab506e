"""Reading the Dockerfile a build names, from the dir it was sent in (daemon or client side)."""

from __future__ import annotations

from pathlib import Path

from buildsvc.errors import InvalidInput

__all__ = ["MAX_DOCKERFILE_BYTES", "read_dockerfile"]

MAX_DOCKERFILE_BYTES = 4 * 1024 * 1024


def read_dockerfile(directory: Path, filename: str) -> str:
    """The Dockerfile ``filename`` inside ``directory``; the name comes from the client, so it must
    name a file inside the dir, not one through a symlink out of it.
    """
    root = directory.resolve()
    path = (root / filename).resolve()
    if not path.is_relative_to(root):
        raise InvalidInput(f"dockerfile {filename!r} is outside the dockerfile dir {directory}")
    try:
        if path.stat().st_size > MAX_DOCKERFILE_BYTES:
            raise InvalidInput(f"dockerfile {filename!r} is larger than {MAX_DOCKERFILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no dockerfile {filename!r} in {directory}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"dockerfile {filename!r} is not UTF-8 text") from None
