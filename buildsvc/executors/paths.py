"""Paths from a build, kept inside their root.

Every path a build names (mount destination, working directory, selector, ``/etc/passwd``) is
looked up here, so a ``..`` or a symlink in an image can never reach the host's filesystem.
"""

from __future__ import annotations

import os
import stat

from buildsvc.executors.errors import InvalidPath

_MAX_SYMLINKS = 255


def clean_container_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` as a clean absolute container path; reject ``..``, NUL and relative paths."""
    if not path or "\x00" in path:
        raise InvalidPath(path, f"{what} must be a non-empty path without NUL")
    if not path.startswith("/"):
        raise InvalidPath(path, f"{what} must be absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPath(path, f"{what} must not contain '..'")
    return "/" + "/".join(parts)


def resolve_in_root(root: str, path: str) -> str:
    """Resolve ``path`` as the process in ``root`` would see it, and return the host path.

    Symlinks (absolute or relative, chained) are followed inside ``root``; ``..`` stops at ``root``,
    like ``securejoin`` / continuity's ``fs.RootPath``. The last component need not exist.
    """
    root = os.path.abspath(root)
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise InvalidPath(path, "too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        more = [p for p in target.split("/") if p not in ("", ".")]
        pending.extend(reversed(more))
    return os.path.join(root, *resolved) if resolved else root


def join_in_root(root: str, path: str) -> str:
    """``resolve_in_root`` for a path that must also be clean (no ``..``), as given by a user."""
    return resolve_in_root(root, clean_container_path(path))
