"""Which entries of each local dir a build sends: ``.dockerignore`` for a Dockerfile's context.

As BuildKit's Dockerfile frontend: the ignore file is ``<Dockerfile>.dockerignore`` beside the
Dockerfile when there is one, else ``.dockerignore`` at the top of the context; it filters the
``context`` local. The ``dockerfile`` local sends only the Dockerfile and the ignore files, so they
reach the daemon even when the context's ``.dockerignore`` lists them. A plain definition's locals
(``--llb``) are sent whole, as ``buildctl`` sends them: their own include and exclude patterns are
the definition's, applied by the solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from buildsvc.contexts.scan import ScanRules
from buildsvc.errors import InvalidInput
from buildsvc.solver.patterns import PatternError, PatternMatcher

__all__ = ["DOCKERIGNORE", "read_ignore_file", "scan_rules"]

DOCKERIGNORE = ".dockerignore"
_MAX_IGNORE_BYTES = 1 << 20


def read_ignore_file(path: Path) -> list[str]:
    """The patterns of an ignore file (moby's ``ignorefile``): comments and blank lines dropped."""
    try:
        if path.stat().st_size > _MAX_IGNORE_BYTES:
            raise InvalidInput(f"{path} is larger than {_MAX_IGNORE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    patterns = []
    for i, line in enumerate(text.splitlines()):
        if i == 0:
            line = line.removeprefix("\ufeff")  # a byte order mark some editors write
        if line.startswith("#"):
            continue
        line = line.strip()
        if line:
            patterns.append(line)
    try:
        PatternMatcher(patterns)
    except PatternError as e:
        raise InvalidInput(f"{path}: {e}") from None
    return patterns


def _ignore_file(local_dirs: Mapping[str, Path], filename: str) -> Path | None:
    for candidate in (
        local_dirs["dockerfile"] / f"{filename}.dockerignore",
        local_dirs["context"] / DOCKERIGNORE,
    ):
        if candidate.is_symlink():
            # Symlinks are never followed; silently sending everything would leak what it hides.
            raise InvalidInput(f"{candidate} is a symlink: an ignore file must be a regular file")
        if candidate.is_file():
            return candidate
    return None


def scan_rules(
    frontend: str, attrs: Mapping[str, str], local_dirs: Mapping[str, Path]
) -> dict[str, ScanRules]:
    """The rules each local dir is scanned with for a build with ``frontend`` and its options."""
    rules = {name: ScanRules() for name in local_dirs}
    if frontend != "dockerfile.v0" or "dockerfile" not in local_dirs or "context" not in local_dirs:
        return rules
    filename = attrs.get("filename") or "Dockerfile"
    rules["dockerfile"] = ScanRules(include=(filename, f"{filename}.dockerignore", DOCKERIGNORE))
    ignore = _ignore_file(local_dirs, filename)
    if ignore is not None:
        rules["context"] = ScanRules(exclude=tuple(read_ignore_file(ignore)))
    return rules
